# Evaluation happens in the training job (rules/train.smk), which writes each run's metrics.json;
# `frelon evaluate` scores a checkpoint again by hand.


rule runs:
    input:
        [f"{run}/metrics.json" for run in frelon_spec.all_runs(config)],


# Gradient checkpointing: memory against time for each model x input size x batch x policy. It takes
# every core and the whole machine (and one GPU unless it runs on the CPU) so that its timings are not
# shared: no other job runs beside it.
rule checkpointing_study:
    output:
        csv="results/checkpointing/checkpointing.csv",
        md="results/checkpointing/checkpointing.md",
        figure="results/checkpointing/checkpointing.png",
    log:
        "logs/checkpointing.log",
    conda:
        "../envs/frelon.yaml"
    threads: CORES
    resources:
        gpu=gpus(config.get("device", "auto"), 1),
        machine=MACHINE,
    params:
        settings=config.get("checkpointing"),
        device=config.get("device", "auto"),
    script:
        "../workflow/scripts/checkpointing_study.py"
