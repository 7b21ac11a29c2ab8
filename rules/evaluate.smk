# Evaluation: score each trained model on its test split, every image exactly once across ranks.


rule evaluate:
    input:
        unpack(run_inputs),
        spec="{run}/spec.json",
        model="{run}/model.pt",
    output:
        "{run}/metrics.json",
    threads: run_world_size
    resources:
        gpu=run_gpus,
    log:
        "{run}/evaluate.log",
    shell:
        "frelon evaluate {input.spec} --checkpoint {input.model} --out {output}"
        " --threads {threads} > {log} 2>&1"


rule runs:
    input:
        [f"{run}/metrics.json" for run in frelon_spec.all_runs(config)],
