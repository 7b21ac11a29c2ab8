# Data stages: generated demo data, weights (download + verify), prepared datasets.


if "demo" in config:

    rule demo_hornet:
        output:
            directory("data/demo/hornet"),
        params:
            **config["demo"]["hornet"],
        log:
            "logs/demo_hornet.log",
        shell:
            "frelon demo-data hornet {output} --presence {params.presence} --absence {params.absence}"
            " --size {params.image_size} --seed {config[seed]} > {log} 2>&1"

    rule demo_source:
        output:
            directory("data/demo/source"),
        params:
            **config["demo"]["source"],
        log:
            "logs/demo_source.log",
        shell:
            "frelon demo-data source {output} --per-class {params.per_class}"
            " --size {params.image_size} --seed {config[seed]} > {log} 2>&1"

    rule demo_export_weights:
        input:
            "data/demo/pretrain/model.pt",
        output:
            weights=config["demo"]["pretrain"]["export"],
            sha256=config["demo"]["pretrain"]["export"] + ".sha256",
        log:
            "logs/demo_export_weights.log",
        shell:
            "frelon export-weights {input} {output.weights} > {log} 2>&1"


rule fetch_weights:
    input:
        weights_local_files,
    output:
        "data/weights/{name}.pth",
    params:
        url=lambda wc: config["weights"][wc.name]["url"],
        hash=weights_hash_option,
    log:
        "logs/fetch_weights/{name}.log",
    shell:
        "frelon fetch {params.url:q} {output} {params.hash} > {log} 2>&1"


rule prepare_dataset:
    input:
        lambda wc: config["datasets"][wc.dataset]["source"],
    output:
        directory("data/prepared/{dataset}"),
    params:
        d=lambda wc: config["datasets"][wc.dataset],
        classes=lambda wc: ",".join(config["datasets"][wc.dataset]["classes"]),
        resize=lambda wc: frelon_spec.preprocessing(config["datasets"][wc.dataset], {})["resize"],
    log:
        "logs/prepare/{dataset}.log",
    shell:
        "frelon prepare {input} {output} --classes {params.classes:q} --val {params.d[val]}"
        " --test {params.d[test]} --size {params.d[image_size]} --resize {params.resize}"
        " --seed {config[seed]} > {log} 2>&1"


rule data:
    input:
        expand("data/weights/{name}.pth", name=config["weights"]),
        expand("data/prepared/{dataset}", dataset=config["datasets"]),
