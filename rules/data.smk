# Data stages: generated demo data, downloads (weights, archives: fetched, verified), extraction,
# prepared datasets (classification folders; VOC, COCO and your own detection sets as COCO JSON), offline
# augmentation.


if "demo" in config:

    rule demo_hornet:
        output:
            directory("data/demo/hornet"),
        log:
            "logs/demo_hornet.log",
        priority: 10  # data before training: every run waits for its data, and the long detection runs for theirs
        conda:
            "../envs/frelon.yaml"
        params:
            **config["demo"]["hornet"],
            seed=config["seed"],
        shell:
            "frelon demo-data hornet {output} --presence {params.presence} --absence {params.absence}"
            " --size {params.image_size} --seed {params.seed} > {log} 2>&1"

    rule demo_source:
        output:
            directory("data/demo/source"),
        log:
            "logs/demo_source.log",
        priority: 10  # the pretraining's data: see train_pretrain
        conda:
            "../envs/frelon.yaml"
        params:
            **config["demo"]["source"],
            seed=config["seed"],
        shell:
            "frelon demo-data source {output} --per-class {params.per_class}"
            " --size {params.image_size} --seed {params.seed} > {log} 2>&1"

    if "hornet_detection" in config["demo"]:

        # trap pictures of two hornets, boxed, as a YOLO export (data.yaml, images/, labels/)
        rule demo_hornet_detection:
            output:
                directory("data/demo/hornet-detection"),
            log:
                "logs/demo_hornet_detection.log",
            priority: 10  # data before training: every run waits for its data, and the long detection runs for theirs
            conda:
                "../envs/frelon.yaml"
            params:
                **config["demo"]["hornet_detection"],
                seed=config["seed"],
            shell:
                "frelon demo-data hornet-detection {output} --images {params.images} --size {params.image_size}"
                " --seed {params.seed} > {log} 2>&1"

    from frelon.data.demo_detection import COCO_ARCHIVES, VOC_ARCHIVES

    # The official archive names and layouts, generated, each with a .sha256 file.
    rule demo_voc:
        output:
            expand("data/demo/voc/{file}{ext}", file=VOC_ARCHIVES, ext=["", ".sha256"]),
        log:
            "logs/demo_voc.log",
        priority: 10  # data before training: every run waits for its data, and the long detection runs for theirs
        conda:
            "../envs/frelon.yaml"
        params:
            **config["demo"]["voc"],
            seed=config["seed"],
        shell:
            "frelon demo-data voc data/demo/voc --images {params.images_per_set} --size {params.image_size}"
            " --seed {params.seed} > {log} 2>&1"

    rule demo_coco:
        output:
            expand("data/demo/coco/{file}{ext}", file=COCO_ARCHIVES, ext=["", ".sha256"]),
        log:
            "logs/demo_coco.log",
        priority: 10  # data before training: every run waits for its data, and the long detection runs for theirs
        conda:
            "../envs/frelon.yaml"
        params:
            **config["demo"]["coco"],
            seed=config["seed"],
        shell:
            "frelon demo-data coco data/demo/coco --images {params.train} --size {params.image_size}"
            " --seed {params.seed} > {log} 2>&1"

    rule demo_export_weights:
        input:
            "data/demo/pretrain/model.pt",
        output:
            weights=config["demo"]["pretrain"]["export"],
            sha256=config["demo"]["pretrain"]["export"] + ".sha256",
        log:
            "logs/demo_export_weights.log",
        priority: 10  # data before training: every run waits for its data, and the long detection runs for theirs
        conda:
            "../envs/frelon.yaml"
        shell:
            "frelon export-weights {input:q} {output.weights:q} > {log} 2>&1"


rule fetch_weights:
    input:
        weights_local_files,
    output:
        "data/weights/{name}.pth",
    log:
        "logs/fetch_weights/{name}.log",
    priority: 10  # data before training: every run waits for its data, and the long detection runs for theirs
    conda:
        "../envs/frelon.yaml"
    params:
        url=lambda wc: config["weights"][wc.name]["url"],
        hash=weights_hash_option,
    shell:
        "frelon fetch {params.url:q} {output} {params.hash} > {log} 2>&1"


rule fetch_archive:
    input:
        archive_local_files,
    output:
        "data/archives/{file}",
    log:
        "logs/fetch_archive/{file}.log",
    priority: 10  # data before training: every run waits for its data, and the long detection runs for theirs
    conda:
        "../envs/frelon.yaml"
    params:
        url=lambda wc: ARCHIVES[wc.file]["url"],
        hash=archive_hash_option,
    shell:
        "frelon fetch {params.url:q} {output} {params.hash} > {log} 2>&1"


rule extract:
    input:
        extract_inputs,
    output:
        directory("data/raw/{name}"),
    log:
        "logs/extract/{name}.log",
    priority: 10  # data before training: every run waits for its data, and the long detection runs for theirs
    conda:
        "../envs/frelon.yaml"
    shell:
        "frelon extract {input} --out {output} > {log} 2>&1"


rule prepare_dataset:
    input:
        dataset_input,
    output:
        directory("data/prepared/{dataset}"),
    log:
        "logs/prepare/{dataset}.log",
    priority: 10  # every run waits for its data (and the demo's pretraining for demo_source's)
    conda:
        "../envs/frelon.yaml"
    params:
        source=dataset_source,
        d=lambda wc: config["datasets"][wc.dataset],
        classes=lambda wc: ",".join(config["datasets"][wc.dataset]["classes"]),
        resize=lambda wc: config["datasets"][wc.dataset].get("resize", config["datasets"][wc.dataset]["image_size"]),
        on_bad_image=lambda wc: config["datasets"][wc.dataset].get("on_bad_image", "fail"),
        seed=config["seed"],
    shell:
        "frelon prepare {params.source:q} {output} --classes {params.classes:q} --val {params.d[val]}"
        " --test {params.d[test]} --size {params.d[image_size]} --resize {params.resize}"
        " --on-bad-image {params.on_bad_image} --seed {params.seed} > {log} 2>&1"


rule augment:
    input:
        "data/prepared/{dataset}",
    output:
        directory("data/augmented/{dataset}"),
    log:
        "logs/augment/{dataset}.log",
    priority: 10  # data before training: every run waits for its data, and the long detection runs for theirs
    conda:
        "../envs/frelon.yaml"
    params:
        options=lambda wc: json.dumps(config["augment"][wc.dataset]),
        seed=config["seed"],
    shell:
        "frelon augment {input} {output} --options {params.options:q} --seed {params.seed} > {log} 2>&1"


rule prepare_voc:
    input:
        voc_input,
    output:
        directory("data/prepared/voc"),
    log:
        "logs/prepare/voc.log",
    priority: 10  # data before training: every run waits for its data, and the long detection runs for theirs
    conda:
        "../envs/frelon.yaml"
    params:
        devkit=voc_devkit,
        d=lambda wc: DETECTION["voc"],
    shell:
        "frelon prepare-voc {params.devkit:q} {output} --train {params.d[train]} --val {params.d[val]} > {log} 2>&1"


rule prepare_coco:
    input:
        coco_root,
    output:
        directory("data/prepared/coco"),
    log:
        "logs/prepare/coco.log",
    priority: 10  # data before training: every run waits for its data, and the long detection runs for theirs
    conda:
        "../envs/frelon.yaml"
    shell:
        "frelon prepare-coco {input:q} {output} > {log} 2>&1"


rule prepare_detection:
    input:
        own_detection_inputs,
    output:
        directory("data/prepared/{detection}"),
    log:
        "logs/prepare/{detection}.log",
    priority: 10  # data before training: every run waits for its data, and the long detection runs for theirs
    conda:
        "../envs/frelon.yaml"
    params:
        arguments=own_detection_arguments,
    shell:
        "frelon prepare-detection {params.arguments} > {log} 2>&1"


rule data:
    input:
        all_data(),
