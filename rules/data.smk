# Data stages: generated demo data, downloads (weights, archives: fetched, verified), extraction,
# prepared datasets (classification folders, VOC and COCO as COCO JSON), offline augmentation.


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

    from frelon.data.demo_detection import COCO_ARCHIVES, VOC_ARCHIVES

    # The official archive names and layouts, generated, each with a .sha256 file.
    rule demo_voc:
        output:
            expand("data/demo/voc/{file}{ext}", file=VOC_ARCHIVES, ext=["", ".sha256"]),
        params:
            **config["demo"]["voc"],
        log:
            "logs/demo_voc.log",
        shell:
            "frelon demo-data voc data/demo/voc --images {params.images_per_set} --size {params.image_size}"
        " --seed {config[seed]} > {log} 2>&1"

    rule demo_coco:
        output:
            expand("data/demo/coco/{file}{ext}", file=COCO_ARCHIVES, ext=["", ".sha256"]),
        params:
            **config["demo"]["coco"],
        log:
            "logs/demo_coco.log",
        shell:
            "frelon demo-data coco data/demo/coco --images {params.train} --size {params.image_size}"
        " --seed {config[seed]} > {log} 2>&1"

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


rule fetch_archive:
    input:
        archive_local_files,
    output:
        "data/archives/{file}",
    params:
        url=lambda wc: ARCHIVES[wc.file]["url"],
        hash=archive_hash_option,
    log:
        "logs/fetch_archive/{file}.log",
    shell:
        "frelon fetch {params.url:q} {output} {params.hash} > {log} 2>&1"


rule extract:
    input:
        extract_inputs,
    output:
        directory("data/raw/{name}"),
    log:
        "logs/extract/{name}.log",
    shell:
        "frelon extract {input} --out {output} > {log} 2>&1"


rule prepare_dataset:
    input:
        dataset_input,
    output:
        directory("data/prepared/{dataset}"),
    params:
        source=dataset_source,
        d=lambda wc: config["datasets"][wc.dataset],
        classes=lambda wc: ",".join(config["datasets"][wc.dataset]["classes"]),
        resize=lambda wc: config["datasets"][wc.dataset].get("resize", config["datasets"][wc.dataset]["image_size"]),
        on_bad_image=lambda wc: config["datasets"][wc.dataset].get("on_bad_image", "fail"),
    log:
        "logs/prepare/{dataset}.log",
    shell:
        "frelon prepare {params.source:q} {output} --classes {params.classes:q} --val {params.d[val]}"
        " --test {params.d[test]} --size {params.d[image_size]} --resize {params.resize}"
        " --on-bad-image {params.on_bad_image} --seed {config[seed]} > {log} 2>&1"


rule augment:
    input:
        "data/prepared/{dataset}",
    output:
        directory("data/augmented/{dataset}"),
    params:
        options=lambda wc: json.dumps(config["augment"][wc.dataset]),
    log:
        "logs/augment/{dataset}.log",
    shell:
        "frelon augment {input} {output} --options {params.options:q} --seed {config[seed]} > {log} 2>&1"


rule prepare_voc:
    input:
        voc_input,
    output:
        directory("data/prepared/voc"),
    params:
        devkit=voc_devkit,
        d=lambda wc: DETECTION["voc"],
    log:
        "logs/prepare/voc.log",
    shell:
        "frelon prepare-voc {params.devkit:q} {output} --train {params.d[train]} --val {params.d[val]} > {log} 2>&1"


rule prepare_coco:
    input:
        coco_root,
    output:
        directory("data/prepared/coco"),
    log:
        "logs/prepare/coco.log",
    shell:
        "frelon prepare-coco {input:q} {output} > {log} 2>&1"


rule data:
    input:
        all_data(),
