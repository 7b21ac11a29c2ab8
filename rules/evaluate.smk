# Evaluation: score each trained model on its test split, every image exactly once across ranks.


rule evaluate:
    input:
        unpack(run_inputs),
        spec="{run}/spec.json",
        model="{run}/model.pt",
    output:
        metrics="{run}/metrics.json",
    log:
        "{run}/evaluate.log",
    conda:
        "../envs/frelon.yaml"
    threads: run_world_size
    resources:
        gpu=run_gpus,
        nodes=run_nodes,
        cpus_per_gpu=run_cpus_per_gpu,
    shell:
        "frelon evaluate {input.spec} --checkpoint {input.model} --out {output.metrics}"
        " --threads {threads} > {log} 2>&1"


# A detection run also writes its detections (COCO results) and a picture of validation images.
use rule evaluate as evaluate_detection with:
    output:
        metrics="{run}/metrics.json",
        detections="{run}/detections.json",
        picture="{run}/predictions.png",
    wildcard_constraints:
        run=DETECTION_RUNS,


ruleorder: evaluate_detection > evaluate


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
