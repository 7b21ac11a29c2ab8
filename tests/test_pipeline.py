"""End to end: the Snakemake DAG on the embedded demo, and bad input stopped before any training."""

import hashlib
import json

import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from conftest import copy_workflow, run

pytestmark = pytest.mark.slow


def test_the_dag_is_shown_without_running_anything(tmp_path):
    work = copy_workflow(tmp_path)
    # the demo's runs are pinned to the CPU, so they are scheduled even on a machine without GPUs
    proc = run(["snakemake", "-n", "--cores", "2", "--resources", "gpu=0", "--configfile", "config/demo.yaml"],
               cwd=work)
    for rule in ("demo_hornet", "prepare_dataset", "fetch_weights", "train", "train_detection", "study_table"):
        assert rule in proc.stdout
    assert not (work / "data").exists() and not (work / "results").exists()


def test_demo_produces_the_finetune_table_from_real_training(demo_run):
    table = pd.read_csv(demo_run / "results" / "tables" / "finetune.csv").set_index("experiment")
    assert list(table.index) == ["pretrained", "pretrained-head", "random", "pretrained-augmented"]
    assert list(table.init) == ["resnet18", "resnet18", "random", "resnet18"]
    assert list(table.trained) == ["all", "head", "all", "all"]
    assert list(table.augmented) == [False, False, False, True]
    runs = demo_run / "results" / "runs" / "finetune"
    # the augmented run saw three times the images for a third of the epochs: about as many steps
    steps = {name: pd.read_csv(runs / name / "seed0" / "history.csv").step.iloc[-1]
             for name in ("pretrained", "pretrained-augmented")}
    assert abs(steps["pretrained-augmented"] - steps["pretrained"]) <= 0.1 * steps["pretrained"]
    counts = json.loads((demo_run / "data" / "prepared" / "hornet" / "report.json").read_text())["counts"]
    n_test = sum(counts["test"].values())
    majority = max(counts["test"].values()) / n_test
    assert (table.n_test == n_test).all()
    # three seeds each: the table's mean and sample std are those of the runs' own metrics
    assert (table.runs == 3).all() and (table.n == 3).all()
    accuracies = [json.loads((runs / "random" / f"seed{k}" / "metrics.json").read_text())["accuracy"] for k in range(3)]
    assert table.loc["random", "test_accuracy"] == pytest.approx(pd.Series(accuracies).mean(), abs=1e-4)
    assert table.loc["random", "test_accuracy_std"] == pytest.approx(pd.Series(accuracies).std(), abs=1e-4)
    seeds = {json.loads((runs / "random" / f"seed{k}" / "spec.json").read_text())["seed"] for k in range(3)}
    assert seeds == {0, 1, 2}
    pretrained = table.loc["pretrained"]
    assert pretrained.test_accuracy > majority and pretrained.test_balanced_accuracy > 0.6
    history = pd.read_csv(runs / "pretrained" / "seed0" / "history.csv")
    assert len(history) == pretrained.epochs
    assert (demo_run / "results" / "tables" / "finetune.md").read_text().startswith("| experiment")
    assert len(pd.read_csv(demo_run / "results" / "tables" / "runs" / "finetune.csv")) == 12
    assert (demo_run / "results" / "tables" / "finetune.tex").read_text().startswith("\\begin{tabular}")


def test_dvc_metrics_file_matches_the_table(demo_run):
    metrics = json.loads((demo_run / "results" / "metrics.json").read_text())
    table = pd.read_csv(demo_run / "results" / "tables" / "finetune.csv").set_index("experiment")
    assert metrics["finetune"]["random"]["test_accuracy"] == table.loc["random", "test_accuracy"]


def test_demo_weights_went_through_the_hash_checked_fetch(demo_run):
    exported = demo_run / "data" / "demo" / "weights" / "resnet18-demo.pth"
    fetched = demo_run / "data" / "weights" / "resnet18.pth"
    digest = (exported.parent / "resnet18-demo.pth.sha256").read_text().split()[0]
    assert hashlib.sha256(fetched.read_bytes()).hexdigest() == digest


def test_a_second_run_does_nothing(demo_run):
    proc = run(["snakemake", "--cores", "2", "--configfile", "config/demo.yaml"], cwd=demo_run)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def user_config(work, hornet, weights_file, sha256):
    """A config for a user's own data: a hornet folder and a local weights file."""
    config = yaml.safe_load((work / "config" / "demo.yaml").read_text())
    del config["demo"], config["detection_data"], config["studies"]["detection"]  # no VOC/COCO of the user's
    config["datasets"] = {"hornet": {**config["datasets"]["hornet"], "source": str(hornet)}}
    config["weights"] = {"resnet18": {"url": f"file://{weights_file}", "sha256": sha256}}
    path = work / "config" / "mine.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def make_hornet(root, classes=("absence", "presence"), n=6):
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (40, 40), (30 * i, 100, 50)).save(root / name / f"{i}.png")
    return root


def test_a_mistyped_config_key_stops_before_any_job(tmp_path):
    work = copy_workflow(tmp_path / "w")
    config = (work / "config" / "demo.yaml").read_text().replace("  epochs: 8", "  epoch: 8")
    (work / "config" / "demo.yaml").write_text(config)
    proc = run(["snakemake", "--cores", "2", "--configfile", "config/demo.yaml"], cwd=work, check=False)
    assert proc.returncode != 0
    assert "config key train: unknown key 'epoch'" in proc.stdout + proc.stderr
    assert not (work / "data").exists() and not (work / "results").exists()


def test_a_folder_without_presence_stops_before_any_job(tmp_path):
    work = copy_workflow(tmp_path / "w")
    hornet = make_hornet(tmp_path / "hornet", classes=("absence",))
    (tmp_path / "w.pth").write_bytes(b"x")
    config = user_config(work, hornet, tmp_path / "w.pth", "0" * 64)
    proc = run(["snakemake", "--cores", "2", "--configfile", str(config)], cwd=work, check=False)
    assert proc.returncode != 0
    assert "no presence/ subfolder" in proc.stdout + proc.stderr
    assert not (work / "data").exists() and not (work / "results").exists()


def test_a_weights_hash_mismatch_stops_before_training_and_leaves_no_file(tmp_path):
    work = copy_workflow(tmp_path / "w")
    hornet = make_hornet(tmp_path / "hornet")
    (tmp_path / "w.pth").write_bytes(b"not the weights you expected")
    config = user_config(work, hornet, tmp_path / "w.pth", "f37072fd")
    proc = run(["snakemake", "--cores", "2", "--configfile", str(config)], cwd=work, check=False)
    assert proc.returncode != 0
    log = (work / "logs" / "fetch_weights" / "resnet18.log").read_text()
    assert "SHA-256 mismatch: expected f37072fd" in log
    assert not (work / "data" / "weights").exists() or not list((work / "data" / "weights").iterdir())
    assert not list((work / "results" / "runs").glob("*/*/model.pt"))


def test_demo_scaling_study_covers_world_sizes_lr_rules_and_warmup(demo_run):
    table = pd.read_csv(demo_run / "results" / "tables" / "scaling.csv").set_index("experiment")
    assert sorted(table.world_size.unique()) == [1, 2]
    two = table[table.world_size == 2]
    assert set(zip(two.lr_scaling, two.warmup_epochs > 0)) == {("none", False), ("none", True),
                                                                ("linear", False), ("linear", True)}
    assert (two[two.lr_scaling == "linear"].lr == 2 * table.loc["w1-nowarmup", "lr"]).all()
    assert (table.efficiency == (table.speedup / table.world_size).round(3)).all()
    assert table.speedup.notna().all() and (table.epoch_seconds > 0).all()


def test_demo_ingredients_study_covers_norms_depths_residuals_and_an_lr_sweep_with_and_without_bn(demo_run):
    table = pd.read_csv(demo_run / "results" / "tables" / "ingredients.csv").set_index("experiment")
    assert set(table.norm) == {"batch", "group", "none"}
    assert set(zip(table.arch, table.residual)) == {("resnet18", True), ("resnet34", True), ("resnet34", False)}
    for norm in ("batch", "none"):
        assert table[(table.norm == norm) & (table.arch == "resnet18") & table.residual].lr.nunique() == 2
    assert (table.init == "random").all() and "speedup" not in table  # one world size: no scaling columns
    # every run is either scored or reported as diverged, never both, and none is missing
    assert (table.n + table.diverged == table.runs).all() and (table.missing == 0).all()
    assert table.n.sum() >= table.runs.sum() // 2
    for name, row in table.iterrows():
        for seed in range(row.runs):
            model = torch.load(demo_run / "results" / "runs" / "ingredients" / name / f"seed{seed}" / "model.pt",
                               weights_only=True)
            assert model["spec"]["model"]["norm"] == row.norm and model["spec"]["model"]["arch"] == row.arch
            has_running_stats = any(k.endswith("running_mean") for k in model["model"])
            assert has_running_stats == (row.norm == "batch")


def test_demo_checkpointing_study_measures_every_policy(demo_run):
    table = pd.read_csv(demo_run / "results" / "checkpointing" / "checkpointing.csv")
    assert set(table.model) == {"resnet18", "centernet-resnet18"}
    for _, rows in table.groupby("model"):
        rows = rows.set_index("policy")
        assert list(rows.index) == ["none", "layer2+layer4", "layer1+layer2+layer3+layer4", "sqrt", "all"]
        saved = rows.saved_activation_mb
        assert saved["none"] > saved["layer2+layer4"] > saved["all"] and rows.saved_ratio["none"] == 1
        assert (rows.step_ms > 0).all() and (rows.max_batch >= rows.max_batch["none"]).all()
    assert (demo_run / "results" / "checkpointing" / "checkpointing.png").stat().st_size > 0


def test_demo_detection_study_trains_centernet_on_voc_coco_and_a_yolo_export_and_scores_it_with_pycocotools(demo_run):
    table = pd.read_csv(demo_run / "results" / "tables" / "detection.csv").set_index("experiment")
    assert list(table.index) == ["voc-unet", "coco-unet", "hornet-unet"]
    assert list(table.dataset) == ["voc", "coco", "hornet_traps"]
    for name, dataset in (("voc-unet", "voc"), ("hornet-unet", "hornet_traps")):
        images = json.loads((demo_run / "data" / "prepared" / dataset / "report.json").read_text())["splits"]["val"]
        assert table.loc[name, "n_val"] == images["images"]
    assert (table.runs == 1).all() and (table.AP50 > 0.5).all()  # learnt, not chance
    assert pd.notna(table.loc["voc-unet", "AP50_voc07"]) and table.AP50_voc07.notna().sum() == 1
    categories = json.loads((demo_run / "data" / "prepared" / "hornet_traps" / "categories.json").read_text())
    assert [c["name"] for c in categories] == ["velutina", "crabro"]
    for name in table.index:
        run = demo_run / "results" / "runs" / "detection" / name
        assert json.loads((run / "detections.json").read_text()) and (run / "predictions.png").stat().st_size > 0
    metrics = json.loads((demo_run / "results" / "metrics.json").read_text())
    assert metrics["detection"]["voc-unet"]["AP50"] == table.loc["voc-unet", "AP50"]


def test_one_study_runs_without_the_data_of_the_others(tmp_path):
    work = copy_workflow(tmp_path / "w")
    config = yaml.safe_load((work / "config" / "demo.yaml").read_text())
    config["datasets"]["hornet"]["source"] = str(tmp_path / "no-such-folder")  # no hornet images at all
    (work / "config" / "mine.yaml").write_text(yaml.safe_dump(config))
    dry = ["snakemake", "-n", "--cores", "2", "--configfile", "config/mine.yaml"]
    detection = run(dry[:2] + ["detection"] + dry[2:], cwd=work).stdout
    assert "prepare_voc" in detection and "prepare_coco" in detection and "dataset=hornet" not in detection
    everything = run(dry, cwd=work, check=False)
    assert everything.returncode != 0 and "no-such-folder" in everything.stdout + everything.stderr
    finetune = run(dry[:2] + ["finetune"] + dry[2:], cwd=work, check=False)
    assert finetune.returncode != 0  # it needs the hornet images, and says where they are missing


def test_a_vocdevkit_you_already_have_is_prepared_in_place_without_a_download(tmp_path):
    from detection_fixtures import voc_devkit

    work = copy_workflow(tmp_path / "w")
    devkit = voc_devkit(tmp_path / "mine", images_per_set=4)
    config = yaml.safe_load((work / "config" / "demo.yaml").read_text())
    config["detection_data"]["voc"] = {"devkit": str(devkit), "train": "2007:trainval,2012:trainval", "val": "2007:test"}
    (work / "config" / "mine.yaml").write_text(yaml.safe_dump(config))
    run(["snakemake", "--cores", "2", "data/prepared/voc", "--configfile", "config/mine.yaml"], cwd=work)
    splits = json.loads((work / "data" / "prepared" / "voc" / "splits.json").read_text())
    assert splits["val"]["images"] == str(devkit)
    assert not (work / "data" / "archives").exists() and not (work / "data" / "raw").exists()


def test_demo_augmentation_study_trains_each_online_transform_alone_and_all_together(demo_run):
    table = pd.read_csv(demo_run / "results" / "tables" / "augmentation.csv").set_index("experiment")
    assert list(table.augment) == ["none", "mirror", "affine", "colour", "erasing", "noise",
                                   "mirror+affine+colour+erasing+noise"]
    assert (table.n == 2).all() and table.test_accuracy.notna().all()
    spec = json.loads((demo_run / "results" / "runs" / "augmentation" / "none" / "seed0" / "spec.json").read_text())
    assert spec["data"]["augment"] == [] and spec["data"]["dir"] == "data/prepared/hornet"
    assert (demo_run / "results" / "figures" / "augmentation-augment.png").stat().st_size > 0


def test_demo_adversarial_study_attacks_the_finetuned_classifiers(demo_run):
    out = demo_run / "results" / "adversarial"
    attacks = pd.read_csv(out / "attacks.csv")
    assert set(attacks.model) == {"pretrained", "random", "pretrained-augmented"}
    assert set(attacks.attack) == {"fgsm", "pgd"} and sorted(attacks.eps_255.unique()) == [0, 1, 2, 4, 8]
    table = pd.read_csv(demo_run / "results" / "tables" / "runs" / "finetune.csv")
    clean = table[(table.experiment == "pretrained") & (table.seed == 0)].test_accuracy.iloc[0]
    at_zero = attacks[(attacks.model == "pretrained") & (attacks.eps_255 == 0)].accuracy
    assert at_zero.round(4).tolist() == [round(clean, 4)] * 2   # eps 0 is the clean test accuracy
    for model, rows in attacks[attacks.attack == "pgd"].groupby("model"):
        assert rows.sort_values("eps_255").accuracy.is_monotonic_decreasing, model
    patch = pd.read_csv(out / "patch.csv")
    assert sorted(patch.area) == [0.01, 0.02, 0.05, 0.1] and patch.success.between(0, 1).all()
    for name in ("example.png", "patch.png"):
        assert (out / name).stat().st_size > 0


def test_demo_claims_are_computed_from_the_tables_and_the_report_shows_everything(demo_run):
    config = yaml.safe_load((demo_run / "config" / "demo.yaml").read_text())
    claims = pd.read_csv(demo_run / "results" / "claims.csv")
    assert list(claims.claim) == [c["claim"] for c in config["claims"]]
    assert set(claims.verdict) <= {"supported", "contradicted", "within spread", "no difference", "holds once",
                                   "fails once", "not evidence"}
    finetune = pd.read_csv(demo_run / "results" / "tables" / "finetune.csv").set_index("experiment")
    first = claims.iloc[0]
    assert first.a_value == finetune.loc["pretrained", "test_accuracy"]
    assert first.b_value == finetune.loc["random", "test_accuracy"]
    assert first.a_n == 3 and first.spread > 0
    report = (demo_run / "results" / "report.md").read_text()
    for study in config["studies"]:
        assert f"## Study: {study}" in report and f"](figures/{study}.png)" in report
        assert (demo_run / "results" / "figures" / f"{study}.png").stat().st_size > 0
    assert "](figures/scaling-scaling.png)" in report and "](adversarial/patch.png)" in report
    assert "## The course's claims, checked" in report and first.claim in report
    html = demo_run / "results" / "report.html"
    run(["snakemake", "--cores", "2", "--configfile", "config/demo.yaml", "--report", str(html)], cwd=demo_run)
    text = html.read_text(errors="replace")
    assert "scaling-scaling.png" in text and "claims.csv" in text
