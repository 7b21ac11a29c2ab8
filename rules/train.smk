# Training: resolve each experiment into spec.json, then train it through the launcher (torchrun).


rule spec:
    output:
        "{run}/spec.json",
    params:
        spec=run_spec,
    log:
        "{run}/spec.log",
    script:
        "../workflow/scripts/write_spec.py"


rule train:
    input:
        unpack(run_inputs),
        spec="{run}/spec.json",
    output:
        model="{run}/model.pt",
        history="{run}/history.csv",
    threads: run_world_size
    resources:
        gpu=run_gpus,
    log:
        "{run}/train.log",
    shell:
        "frelon train {input.spec} --threads {threads} > {log} 2>&1"
