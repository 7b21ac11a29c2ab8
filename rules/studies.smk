# Studies on top of the trained runs: figures of each study, the online augmentation preview, and the
# adversarial study (FGSM, PGD and a patch against trained classifiers).


rule study_figure:
    input:
        lambda wc: [f"{run}/{name}" for run in study_runs(wc.study) for name in ("metrics.json", "history.csv")],
    output:
        report("results/figures/{study}.png", category="{study}"),
    log:
        "logs/figures/{study}.log",
    conda:
        "../envs/frelon.yaml"
    params:
        runs=lambda wc: frelon_spec.runs_by_experiment(config, wc.study),
    script:
        "../workflow/scripts/study_figure.py"


rule scaling_figure:
    input:
        "results/tables/{study}.csv",
    output:
        report("results/figures/{study}-scaling.png", category="{study}"),
    log:
        "logs/figures/{study}-scaling.log",
    conda:
        "../envs/frelon.yaml"
    script:
        "../workflow/scripts/scaling_figure.py"


rule augmentation_preview:
    input:
        lambda wc: frelon_spec.prepared_dir(config["studies"][wc.study]["dataset"]),
    output:
        report("results/figures/{study}-augment.png", category="{study}"),
    log:
        "logs/figures/{study}-augment.log",
    conda:
        "../envs/frelon.yaml"
    params:
        settings=lambda wc: augment_settings(wc.study),
        preprocessing=lambda wc: frelon_spec.resolve(config, study_runs(wc.study)[0])["data"]["preprocessing"],
        seed=config["seed"],
    script:
        "../workflow/scripts/augmentation_preview.py"


if "adversarial" in config:

    rule adversarial_study:
        input:
            models=[f"{run}/model.pt" for run in adversarial_runs().values()],
            data=frelon_spec.prepared_dir(config["studies"][config["adversarial"]["study"]]["dataset"]),
        output:
            attacks="results/adversarial/attacks.csv",
            attacks_md="results/adversarial/attacks.md",
            patch="results/adversarial/patch.csv",
            patch_md="results/adversarial/patch.md",
            example=report("results/adversarial/example.png", category="Adversarial"),
            patch_figure=report("results/adversarial/patch.png", category="Adversarial"),
        log:
            "logs/adversarial.log",
        priority: 3
        conda:
            "../envs/frelon.yaml"
        threads: max(1, CORES // 2)  # beside training jobs, not alone after them
        resources:
            gpu=gpus(config.get("device", "auto"), 1),
        params:
            models=adversarial_runs(),
            settings={k: v for k, v in config["adversarial"].items() if k not in ("study", "models")},
            device=config.get("device", "auto"),
        script:
            "../workflow/scripts/adversarial_study.py"
