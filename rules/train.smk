# Training: resolve each experiment into spec.json, then train it through the launcher (torchrun), and
# score the test split in the same processes (metrics.json; every image exactly once across ranks).
# A timed study's runs (scaling) each take the whole machine: no other job runs beside them.


rule spec:
    output:
        "{run}/spec.json",
    log:
        "{run}/spec.log",
    priority: 5  # ahead of the runs (0.3 s each): a run's priority waits for its spec, priorities do not pass to inputs
    conda:
        "../envs/frelon.yaml"
    params:
        spec=run_spec,
    script:
        "../workflow/scripts/write_spec.py"


rule train:
    input:
        unpack(run_inputs),
        spec="{run}/spec.json",
    output:
        model="{run}/model.pt",
        history="{run}/history.csv",
        metrics="{run}/metrics.json",
    log:
        "{run}/train.log",
    conda:
        "../envs/frelon.yaml"
    threads: run_world_size
    resources:
        gpu=run_gpus,
        nodes=run_nodes,
        cpus_per_gpu=run_cpus_per_gpu,
        machine=run_machine,
    shell:
        "frelon train {input.spec} --metrics {output.metrics} --threads {threads} --as-job > {log} 2>&1"


# A detection run's evaluation also writes its detections (COCO results) and a picture of validation images.
use rule train as train_detection with:
    output:
        model="{run}/model.pt",
        history="{run}/history.csv",
        metrics="{run}/metrics.json",
        detections="{run}/detections.json",
        picture="{run}/predictions.png",
    wildcard_constraints:
        run=DETECTION_RUNS,
    priority: 5  # the longest runs start first, rather than last with one core left idle beside them


ruleorder: train_detection > train


# The demo's pretraining goes first: every run from its weights waits for it.
use rule train as train_pretrain with:
    wildcard_constraints:
        run=frelon_spec.PRETRAIN_RUN,
    priority: 20  # before everything that can wait: every run from its weights waits for it


ruleorder: train_pretrain > train


# ... and so does its spec
use rule spec as spec_pretrain with:
    wildcard_constraints:
        run=frelon_spec.PRETRAIN_RUN,
    priority: 20


ruleorder: spec_pretrain > spec


if "adversarial" in config:

    # The runs the adversarial study attacks come before the other runs, so that the study (on half the
    # cores) runs beside training rather than after it.
    use rule train as train_attacked with:
        wildcard_constraints:
            run="|".join(re.escape(run) for run in adversarial_runs().values()),
        priority: 4

    ruleorder: train_attacked > train
