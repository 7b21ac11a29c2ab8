# Aggregation: one table per study (each experiment's mean, std and n over its seeds; every run's row in
# results/tables/runs/), and results/metrics.json for `dvc metrics show`.


rule study_table:
    input:
        metrics=study_metrics,
        runs=study_run_files,
    output:
        csv=report("results/tables/{study}.csv", category="{study}"),
        md="results/tables/{study}.md",
        tex="results/tables/{study}.tex",
        runs="results/tables/runs/{study}.csv",
    log:
        "logs/table/{study}.log",
    conda:
        "../envs/frelon.yaml"
    params:
        references=study_references,
    shell:
        "frelon table {input.metrics} --csv {output.csv} --md {output.md} --tex {output.tex} --runs-csv {output.runs}"
        " --references {params.references:q} > {log} 2>&1"


# `snakemake <study>`: one study's table, and only the data and runs it needs.
for study in config["studies"]:

    rule:
        name:
            study
        input:
            expand("results/tables/{study}.{ext}", study=study, ext=["csv", "md", "tex"]),
        localrule: True


rule metrics:
    input:
        expand("results/tables/{study}.csv", study=config["studies"]),
    output:
        "results/metrics.json",
    log:
        "logs/metrics.log",
    conda:
        "../envs/frelon.yaml"
    shell:
        "frelon metrics {input} --out {output} > {log} 2>&1"


if "claims" in config:

    rule claims:
        input:
            frelon_claims.inputs(config["claims"]),
        output:
            csv=report("results/claims.csv", category="Claims"),
            md="results/claims.md",
        log:
            "logs/claims.log",
        conda:
            "../envs/frelon.yaml"
        params:
            claims=config["claims"],
        script:
            "../workflow/scripts/claims.py"


# results/report.md: the claims, every study's table and figures, checkpointing and the adversarial
# study, under a header naming the config files, the data, the machine and the date.
# `snakemake --report results/report.html` gathers the same outputs (marked report(...)).
rule report:
    input:
        tables=expand("results/tables/{study}.{ext}", study=config["studies"], ext=["csv", "md", "tex"]),
        runs=expand("results/tables/runs/{study}.csv", study=config["studies"]),
        # the header reads each run's spec.json and metrics.json (device, machine)
        run_files=[
            f"{run}/{name}"
            for study in config["studies"]
            for run in study_runs(study)
            for name in ("spec.json", "metrics.json")
        ],
        metrics="results/metrics.json",
        figures=[f for figures in report_figures().values() for f in figures],
        claims=rules.claims.output if "claims" in config else [],
        checkpointing=rules.checkpointing_study.output if "checkpointing" in config else [],
        adversarial=rules.adversarial_study.output if "adversarial" in config else [],
    output:
        "results/report.md",
    log:
        "logs/report.log",
    conda:
        "../envs/frelon.yaml"
    params:
        figures=report_figures(),
        runs={study: study_runs(study) for study in config["studies"]},
        configfiles=[str(path) for path in workflow.config_settings.configfiles] or ["config/config.yaml"],
        config_args=list(workflow.config_settings.config_args or []),
    script:
        "../workflow/scripts/report.py"
