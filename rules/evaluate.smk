# Evaluation: score each trained model on its test split, every image exactly once across ranks.


rule evaluate:
    input:
        unpack(run_inputs),
        spec="{run}/spec.json",
        model="{run}/model.pt",
    output:
        metrics="{run}/metrics.json",
    threads: run_world_size
    resources:
        gpu=run_gpus,
    log:
        "{run}/evaluate.log",
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
# every core (and one GPU unless the config pins the CPU) so that its timings are not shared.
rule checkpointing_study:
    output:
        csv="results/checkpointing/checkpointing.csv",
        md="results/checkpointing/checkpointing.md",
        figure="results/checkpointing/checkpointing.png",
    params:
        settings=config.get("checkpointing"),
        device=config.get("device", "auto"),
    threads: workflow.cores
    resources:
        gpu=0 if config.get("device") == "cpu" else 1,
    log:
        "logs/checkpointing.log",
    script:
        "../workflow/scripts/checkpointing_study.py"
