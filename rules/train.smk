# Training: resolve each experiment into spec.json, then train it through the launcher (torchrun).
# A timed study's runs (scaling) each take the whole machine: no other job runs beside them.


rule spec:
    output:
        "{run}/spec.json",
    log:
        "{run}/spec.log",
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
        "frelon train {input.spec} --threads {threads} > {log} 2>&1"
