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
            sorted(
                {
                    frelon_claims.table_path(side["table"])
                    for claim in config["claims"]
                    for side in (claim["a"], claim["b"])
                }
            ),
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
# study. `snakemake --report results/report.html` gathers the same outputs (marked report(...)).
rule report:
    input:
        tables=expand("results/tables/{study}.{ext}", study=config["studies"], ext=["csv", "md", "tex"]),
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
    script:
        "../workflow/scripts/report.py"
