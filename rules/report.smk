# Aggregation: one table per study, and results/metrics.json for `dvc metrics show`.


rule study_table:
    input:
        study_metrics,
    output:
        csv="results/tables/{study}.csv",
        md="results/tables/{study}.md",
    log:
        "logs/table/{study}.log",
    conda:
        "../envs/frelon.yaml"
    params:
        references=study_references,
    shell:
        "frelon table {input} --csv {output.csv} --md {output.md} --references {params.references:q} > {log} 2>&1"


# `snakemake <study>`: one study's table, and only the data and runs it needs.
for study in config["studies"]:

    rule:
        name:
            study
        input:
            expand("results/tables/{study}.{ext}", study=study, ext=["csv", "md"]),
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


rule report:
    input:
        expand("results/tables/{study}.{ext}", study=config["studies"], ext=["csv", "md"]),
        "results/metrics.json",
        rules.checkpointing_study.output if "checkpointing" in config else [],
