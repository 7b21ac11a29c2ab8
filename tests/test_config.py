import copy

import pytest
import torch
import yaml
from PIL import Image

from conftest import REPO
from frelon.config import check_source, validate
from frelon.train.engine import should_compile
from frelon.errors import FrelonError
from frelon.models import IMAGENET_MEAN, IMAGENET_STD

SCHEMA = REPO / "config" / "schema.yaml"


@pytest.fixture
def demo():
    return yaml.safe_load((REPO / "config" / "demo.yaml").read_text())


def test_both_shipped_configs_are_valid(demo):
    validate(demo, SCHEMA)
    validate(yaml.safe_load((REPO / "config" / "config.yaml").read_text()), SCHEMA)


def test_a_missing_key_is_named(demo):
    del demo["train"]["epochs"]
    with pytest.raises(FrelonError, match="config key train: missing required key 'epochs'"):
        validate(demo, SCHEMA)


def test_a_mistyped_key_is_named_with_the_allowed_ones(demo):
    demo["train"]["batch_sise"] = demo["train"].pop("batch_size")
    with pytest.raises(FrelonError, match="config key train: unknown key 'batch_sise'.*batch_size"):
        validate(demo, SCHEMA)


def test_a_wrong_type_is_named(demo):
    demo["datasets"]["hornet"]["image_size"] = "large"
    with pytest.raises(FrelonError, match="config key datasets.hornet.image_size: 'large' is not of type 'integer'"):
        validate(demo, SCHEMA)


def test_an_undefined_dataset_is_named(demo):
    demo["studies"]["finetune"]["dataset"] = "wasps"
    with pytest.raises(FrelonError, match="studies.finetune: dataset 'wasps' is not defined under datasets or detection_data"):
        validate(demo, SCHEMA)


def test_a_user_folder_without_class_subfolders_is_refused_before_any_job_uses_it(demo, tmp_path):
    config = copy.deepcopy(demo)
    (tmp_path / "mine" / "absence").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "mine" / "absence" / "a.png")
    config["datasets"] = {"hornet": {**config["datasets"]["hornet"], "source": str(tmp_path / "mine")}}
    with pytest.raises(FrelonError, match="datasets.hornet.source: .*no presence/ subfolder"):
        check_source(config, "hornet", pipeline_dir=tmp_path / "data")


def test_head_only_without_pretrained_weights_is_refused(demo):
    from frelon.spec import resolve

    demo["studies"]["finetune"]["experiments"]["random"]["model"]["head_only"] = True
    with pytest.raises(FrelonError, match="finetune/random: model.head_only .* set model.weights"):
        resolve(validate(demo, SCHEMA), "results/runs/finetune/random/seed0")


def test_the_spec_carries_the_weights_preprocessing_and_the_datasets_resize_and_crop(demo):
    from frelon.spec import resolve

    demo["weights"]["resnet18"].update(mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2])
    demo["datasets"]["hornet"]["resize"] = 56
    config = validate(demo, SCHEMA)
    pretrained = resolve(config, "results/runs/finetune/pretrained/seed0")["data"]["preprocessing"]
    crop = demo["datasets"]["hornet"]["image_size"]
    assert pretrained == {"resize": 56, "crop": crop, "mean": [0.5] * 3, "std": [0.2] * 3}
    random = resolve(config, "results/runs/finetune/random/seed0")["data"]["preprocessing"]
    assert random == {"resize": 56, "crop": crop, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def test_every_run_of_the_ingredients_study_resolves_with_its_own_model(demo):
    from frelon.spec import all_runs, resolve

    specs = [resolve(validate(demo, SCHEMA), run) for run in all_runs(demo, "ingredients")]
    models = {(s["model"]["arch"], s["model"]["norm"], s["model"]["residual"], s["train"]["lr"]) for s in specs}
    seeds = demo["studies"]["ingredients"].get("seeds", [demo["seed"]])
    assert len(models) == len(demo["studies"]["ingredients"]["experiments"]) == len(specs) // len(seeds)
    # one run per experiment and seed, each with its own seed and the rest of its spec equal
    by_experiment = {}
    for s in specs:
        by_experiment.setdefault(s["experiment"], []).append(s)
    for runs in by_experiment.values():
        assert sorted(r["seed"] for r in runs) == sorted(seeds)
        assert all({**r, "seed": 0, "output": ""} == {**runs[0], "seed": 0, "output": ""} for r in runs)
    assert {s["model"]["norm"] for s in specs} == {"batch", "group", "none"}
    assert {(s["model"]["arch"], s["model"]["residual"]) for s in specs} >= {
        ("resnet18", True), ("resnet34", True), ("resnet34", False)}
    assert all(s["train"]["on_divergence"] == "stop" and s["model"]["weights"] is None for s in specs)


def test_augmented_runs_need_an_augment_entry_and_archives_need_distinct_names(demo):
    broken = copy.deepcopy(demo)
    del broken["augment"]
    with pytest.raises(FrelonError, match="augmented: true, but augment has no entry for 'hornet'"):
        validate(broken, SCHEMA)
    clash = copy.deepcopy(demo)
    clash["detection_data"]["coco"]["archives"][0]["url"] = "http://elsewhere/VOCtest_06-Nov-2007.tar"
    with pytest.raises(FrelonError, match="two archives are both named 'VOCtest_06-Nov-2007.tar'"):
        validate(clash, SCHEMA)
    no_hash = copy.deepcopy(demo)
    no_hash["detection_data"]["voc"]["archives"][0] = {"url": "http://x/VOCtest.tar"}
    with pytest.raises(FrelonError, match=r"detection_data.voc.archives.0"):
        validate(no_hash, SCHEMA)


def test_a_dataset_can_come_from_an_archive_and_the_spec_reads_its_augmented_copy(demo):
    from frelon.spec import resolve

    demo["datasets"]["hornet"]["source"] = {"archive": {"url": "https://example.org/hornet.zip", "md5": "0" * 32},
                                            "subdir": "hornet"}
    config = validate(demo, SCHEMA)
    check_source(config, "hornet")  # an archive is checked once extracted, not at start-up
    spec = resolve(config, "results/runs/finetune/pretrained-augmented/seed0")
    assert spec["data"]["dir"] == "data/augmented/hornet" and spec["data"]["augmented"] is True
    assert resolve(config, "results/runs/finetune/pretrained/seed0")["data"]["dir"] == "data/prepared/hornet"


def test_the_shipped_configs_repeat_no_key():
    """YAML keeps the last of two equal keys without a word: a pasted study would silently vanish."""

    class Strict(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
            repeated = {k for k in keys if keys.count(k) > 1}
            assert not repeated, f"repeated keys {repeated} at line {node.start_mark.line + 1}"
            return super().construct_mapping(node, deep=deep)

    for name in ("config.yaml", "demo.yaml", "schema.yaml"):
        yaml.load((REPO / "config" / name).read_text(), Loader=Strict)


def test_a_detection_study_refuses_classification_keys_and_a_classifier_refuses_a_decoder(demo):
    wrong = copy.deepcopy(demo)
    wrong["studies"]["detection"]["experiments"]["voc-unet"] = {"model": {"head_only": True}}
    with pytest.raises(FrelonError, match=r"studies.detection: model.head_only do not apply to a detection study"):
        validate(wrong, SCHEMA)
    wrong = copy.deepcopy(demo)
    wrong["studies"]["finetune"]["experiments"]["random"]["model"]["decoder"] = "unet"
    with pytest.raises(FrelonError, match="detection and model.decoder apply to detection studies"):
        validate(wrong, SCHEMA)


def test_a_study_may_not_take_the_name_of_a_pipeline_target(demo):
    demo["studies"]["report"] = demo["studies"].pop("finetune")
    with pytest.raises(FrelonError, match="studies.report: the name 'report' is taken by a pipeline target"):
        validate(demo, SCHEMA)


def test_a_detection_experiment_resolves_to_a_letterboxed_centernet_spec_on_its_own_dataset(demo):
    from frelon.spec import resolve

    config = validate(demo, SCHEMA)
    spec = resolve(config, "results/runs/detection/coco-unet")
    assert spec["task"] == "detection" and spec["data"]["dir"] == "data/prepared/coco" and spec["data"]["kind"] == "coco"
    assert spec["model"]["decoder"] == "unet" and spec["detection"]["max_objects"] == 128
    assert spec["data"]["preprocessing"] == {"input_size": 64, "mean": list(IMAGENET_MEAN),
                                             "std": list(IMAGENET_STD)}
    assert spec["train"]["optimizer"] == "adam" and spec["train"]["lr"] == pytest.approx(3e-3)


def test_a_classification_spec_keeps_its_key_order_so_an_upgrade_retrains_nothing(demo):
    """Snakemake compares the spec rule's params as text: a new key order would rerun every training job."""
    from frelon.spec import resolve

    course = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    spec = resolve(validate(course, SCHEMA), "results/runs/finetune/pretrained/seed0")
    assert list(spec) == ["experiment", "task", "seed", "device", "output", "data", "model", "train"]
    assert list(spec["model"]) == ["arch", "weights", "norm", "residual", "zero_init_residual", "head_only",
                                   "num_classes", "weights_path"]
    # a top-level model key is added where the config sets one (the demo's width), after the defaults
    spec = resolve(validate(demo, SCHEMA), "results/runs/finetune/pretrained/seed0")
    assert list(spec["model"]) == ["arch", "weights", "norm", "residual", "zero_init_residual", "head_only",
                                   "width", "num_classes", "weights_path"]


def test_the_top_level_model_is_every_runs_default_and_a_study_or_experiment_overrides_it(demo):
    from frelon.spec import PRETRAIN_RUN, resolve

    demo["model"] = {"width": 16}
    demo["studies"]["ingredients"]["model"]["width"] = 24
    demo["studies"]["ingredients"]["experiments"]["resnet34"]["model"]["width"] = 40
    config = validate(demo, SCHEMA)
    width = {run: resolve(config, run)["model"]["width"] for run in (
        PRETRAIN_RUN, "results/runs/finetune/random/seed0", "results/runs/detection/voc-unet",
        "results/runs/ingredients/norm-none/seed0", "results/runs/ingredients/resnet34/seed0")}
    assert list(width.values()) == [16, 16, 16, 24, 40]


@pytest.mark.parametrize("key,value", [("weights", "resnet18"), ("head_only", True), ("decoder", "unet")])
def test_a_top_level_model_key_that_differs_from_study_to_study_is_refused(demo, key, value):
    demo["model"][key] = value
    with pytest.raises(FrelonError, match=f"config key model: {key} differ from study to study; set them under"):
        validate(demo, SCHEMA)


@pytest.mark.parametrize("width", [0, -8, 2.5, "wide"])
def test_a_width_that_is_not_a_positive_whole_number_is_named(demo, width):
    demo["model"]["width"] = width
    with pytest.raises(FrelonError, match="config key model.width"):
        validate(demo, SCHEMA)


def test_the_nodes_a_run_spreads_over_stay_out_of_its_spec_so_placing_it_elsewhere_retrains_nothing(demo):
    from frelon.spec import nodes_of, resolve

    run = "results/runs/scaling/w2-linear-warmup"
    before = resolve(validate(copy.deepcopy(demo), SCHEMA), run)
    demo["studies"]["scaling"]["experiments"]["w2-linear-warmup"]["train"]["nodes"] = 2
    config = validate(demo, SCHEMA)
    assert resolve(config, run) == before
    assert nodes_of(config, run) == 2 and nodes_of(config, "results/runs/scaling/w1-warmup") == 1


def test_compile_goes_with_any_checkpointing_policy_and_takes_auto(demo):
    demo["train"].update(compile=True, checkpointing="sqrt")
    demo["studies"]["finetune"]["experiments"]["random"]["train"] = {"checkpointing": ["layer2"]}
    validate(demo, SCHEMA)
    demo["train"]["compile"] = "auto"
    validate(demo, SCHEMA)


@pytest.mark.parametrize("value", ["sometimes", "yes", 1])
def test_a_compile_setting_other_than_true_false_or_auto_is_named_with_the_choices(demo, value):
    demo["train"]["compile"] = value
    with pytest.raises(FrelonError,
                       match=rf"config key train.compile: {value!r} is not one of \[True, False, 'auto'\]"):
        validate(demo, SCHEMA)


def test_compile_auto_compiles_on_a_gpu_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU
    assert [should_compile(s, cpu) for s in (True, False, "auto")] == [True, False, False]
    assert [should_compile(s, cuda) for s in (True, False, "auto")] == [True, False, True]


@pytest.mark.parametrize("scaling", ["linear", "none"])
def test_the_global_batch_counts_processes_and_accumulated_micro_batches_and_only_linear_scales_the_lr(demo, scaling):
    from frelon.spec import resolve

    demo["studies"]["scaling"]["experiments"]["w2-linear-warmup"]["train"].update(
        accumulate=3, lr_scaling=scaling, batch_size=8)
    spec = resolve(validate(demo, SCHEMA), "results/runs/scaling/w2-linear-warmup")
    train = spec["train"]
    assert train["global_batch"] == 8 * 2 * 3
    base_lr, base_batch = train["base_lr"], train["base_batch"]
    assert base_batch != 48 and base_lr == demo["studies"]["scaling"]["train"]["base_lr"]
    assert train["lr"] == pytest.approx(base_lr * 48 / base_batch if scaling == "linear" else base_lr)
    assert train["lr_schedule"]["warmup_start_factor"] == pytest.approx(
        min(1.0, base_batch / 48) if scaling == "linear" else 0.0)


def test_an_experiment_overrides_its_study_which_overrides_the_config_key_by_key(demo):
    from frelon.spec import resolve

    demo["train"]["momentum"] = 0.8
    demo["studies"]["scaling"]["train"]["nesterov"] = True
    demo["studies"]["scaling"]["experiments"]["w1-warmup"]["train"]["lr_schedule"]["final_factor"] = 0.2
    train = resolve(validate(demo, SCHEMA), "results/runs/scaling/w1-warmup")["train"]
    assert (train["momentum"], train["nesterov"], train["epochs"]) == (0.8, True, demo["studies"]["scaling"]["train"]["epochs"])
    assert train["lr_schedule"]["final_factor"] == 0.2 and train["lr_schedule"]["warmup_epochs"] == 1
    assert train["lr_schedule"]["decay"] == demo["train"]["lr_schedule"]["decay"]
    assert "nodes" not in train and demo["train"]["momentum"] == 0.8  # the config itself is left as it was


def small_config(demo: dict) -> dict:
    """The demo's data sections with one study of each task, its settings given here: specs to write out."""
    demo["model"] = {}
    demo["weights"]["resnet18"].update(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    demo["datasets"]["hornet"].update(image_size=40, resize=44)
    demo["studies"] = {
        "one": {"dataset": "hornet", "seeds": [3, 4], "augment": ["affine"], "model": {"weights": "resnet18"},
                "train": {"world_size": 2, "batch_size": 4, "accumulate": 2, "base_batch": 8, "base_lr": 0.1,
                          "lr_scaling": "linear"},
                "experiments": {"a": {"model": {"arch": "resnet34"}, "augmented": True},
                                "b": {"model": {"weights": None}, "augment": [], "dataset": "demo_source"}}},
        "boxes": {"dataset": "voc", "detection": {"input_size": 64, "min_overlap": 0.3},
                  "experiments": {"plain": {}, "traps": {"dataset": "hornet_traps", "model": {"decoder": "unet"},
                                                        "detection": {"max_objects": 20}}}},
    }
    demo["adversarial"]["study"], demo["adversarial"]["models"] = "one", ["a"]
    demo["adversarial"].pop("patch_model", None)
    demo["claims"] = []
    return validate(demo, SCHEMA)


def test_a_classification_spec_written_out_in_full(demo):
    from frelon.spec import resolve

    spec = resolve(small_config(demo), "results/runs/one/a/seed4")
    assert {k: v for k, v in spec.items() if k != "train"} == {
        "experiment": "one/a", "task": "classification", "seed": 4, "device": "cpu", "output": "results/runs/one/a/seed4",
        "data": {"dir": "data/augmented/hornet", "augmented": True, "augment": ["affine"],
                 "classes": ["absence", "presence"],
                 "preprocessing": {"resize": 44, "crop": 40, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}},
        "model": {"arch": "resnet34", "weights": "resnet18", "norm": "batch", "residual": True,
                  "zero_init_residual": False, "head_only": False, "num_classes": 2,
                  "weights_path": "data/weights/resnet18.pth"}}
    assert (spec["train"]["global_batch"], spec["train"]["lr"]) == (16, pytest.approx(0.2))
    other = resolve(small_config(demo), "results/runs/one/b/seed3")
    assert other["data"]["dir"] == "data/prepared/demo_source" and other["data"]["augment"] == []
    assert other["data"]["augmented"] is False
    assert other["data"]["preprocessing"]["mean"] == list(IMAGENET_MEAN) and other["model"]["weights_path"] is None
    assert other["data"]["classes"] == demo["datasets"]["demo_source"]["classes"] and other["model"]["num_classes"] == 6
    assert other["data"]["preprocessing"]["resize"] == other["data"]["preprocessing"]["crop"] == 48


def test_a_detection_spec_written_out_in_full(demo):
    from frelon.spec import resolve

    config = small_config(demo)
    spec = resolve(config, "results/runs/boxes/traps")
    assert {k: v for k, v in spec.items() if k != "train"} == {
        "experiment": "boxes/traps", "task": "detection", "seed": 0, "device": "cpu", "output": "results/runs/boxes/traps",
        "data": {"dir": "data/prepared/hornet_traps", "kind": "hornet_traps", "augmented": False,
                 "preprocessing": {"input_size": 64, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}},
        "model": {"decoder": "unet", "arch": "resnet18", "weights": None, "norm": "batch", "residual": True,
                  "zero_init_residual": False, "head_only": False, "weights_path": None},
        "detection": {"input_size": 64, "test_resolution": "letterbox", "max_objects": 20,
                      "too_many_objects": "keep_first", "crowd": "train", "min_overlap": 0.3, "flip_test": False,
                      "top_k": 100, "size_weight": 0.1, "offset_weight": 1.0, "augment": spec["detection"]["augment"]}}
    assert resolve(config, "results/runs/boxes/plain")["model"]["decoder"] == "deconv"


def test_runs_are_listed_per_seed_in_config_order_and_grouped_by_experiment(demo):
    from frelon.spec import all_runs, nodes_of, runs_by_experiment, task_of

    config = small_config(demo)
    assert all_runs(config) == ["results/runs/one/a/seed3", "results/runs/one/a/seed4", "results/runs/one/b/seed3",
                                "results/runs/one/b/seed4", "results/runs/boxes/plain", "results/runs/boxes/traps"]
    assert all_runs(config, "boxes") == ["results/runs/boxes/plain", "results/runs/boxes/traps"]
    assert runs_by_experiment(config, "one") == {"a": ["results/runs/one/a/seed3", "results/runs/one/a/seed4"],
                                                 "b": ["results/runs/one/b/seed3", "results/runs/one/b/seed4"]}
    assert runs_by_experiment(config, "boxes") == {"plain": ["results/runs/boxes/plain"],
                                                   "traps": ["results/runs/boxes/traps"]}
    assert [task_of(config, r) for r in ("results/runs/one/b/seed3", "results/runs/boxes/plain")] == [
        "classification", "detection"]
    config["studies"]["one"]["train"]["nodes"] = 3
    assert nodes_of(config, "results/runs/one/a/seed3") == 3 and nodes_of(config, "results/runs/boxes/plain") == 1
    with pytest.raises(FrelonError, match=r"results/runs/one/a is not a run of this config: expected "
                                          r"results/runs/<study>/<experiment>, and /seed<N> below it"):
        task_of(config, "results/runs/one/a")


def test_the_demo_pretraining_is_a_run_of_its_own_on_the_source_set(demo):
    from frelon.spec import PRETRAIN_RUN, resolve

    spec = resolve(validate(demo, SCHEMA), PRETRAIN_RUN)
    assert (spec["experiment"], spec["output"], spec["seed"]) == ("pretrain/demo", "data/demo/pretrain", demo["seed"])
    assert spec["data"]["dir"] == "data/prepared/demo_source" and spec["model"]["weights"] is None
    assert spec["train"]["epochs"] == demo["demo"]["pretrain"]["train"]["epochs"]


def test_merging_overrides_nested_keys_one_by_one_and_leaves_both_sides_as_they_were():
    from frelon.spec import _merge

    base = {"a": {"x": 1, "deep": {"k": 1}}, "b": 2, "keep": {"n": 1}}
    override = {"a": {"y": 2, "deep": {"j": 2}}, "b": {"w": 1}, "c": {"z": 3}}
    merged = _merge(base, override)
    assert merged == {"a": {"x": 1, "y": 2, "deep": {"k": 1, "j": 2}}, "b": {"w": 1}, "keep": {"n": 1}, "c": {"z": 3}}
    merged["keep"]["n"] = 9
    assert base == {"a": {"x": 1, "deep": {"k": 1}}, "b": 2, "keep": {"n": 1}}  # a copy, not a view
    assert override == {"a": {"y": 2, "deep": {"j": 2}}, "b": {"w": 1}, "c": {"z": 3}}


def test_resolving_changes_nothing_in_the_config(demo):
    from frelon.spec import resolve

    config = validate(demo, SCHEMA)
    before = copy.deepcopy(config)
    resolve(config, "results/runs/scaling/w1-warmup")  # its lr_schedule gets a warmup_start_factor
    resolve(config, "results/runs/detection/voc-unet")
    assert config == before


def test_what_a_config_leaves_out_takes_its_default(demo):
    from frelon.spec import resolve, task_of

    small = small_config(demo)
    del small["device"]
    small["studies"]["boxes"].pop("detection")
    small["studies"]["boxes"]["experiments"]["plain"] = {"detection": {"input_size": 64},
                                                         "model": {"weights": "resnet18"}}
    small["studies"]["one"]["augmented"] = True
    small["studies"]["one"]["experiments"]["a"].pop("augmented")
    plain = resolve(small, "results/runs/boxes/plain")
    assert plain["device"] == "auto" and plain["detection"]["min_overlap"] == 0.7
    assert plain["data"]["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert plain["data"]["preprocessing"]["std"] == [0.25, 0.25, 0.25]
    a = resolve(small, "results/runs/one/a/seed3")
    assert a["device"] == "auto" and a["data"]["augmented"] is True and a["data"]["dir"] == "data/augmented/hornet"
    del small["studies"]["boxes"], small["detection_data"]
    assert task_of(small, "results/runs/one/b/seed3") == "classification"
    assert resolve(small, "results/runs/one/b/seed3")["data"]["augmented"] is True  # the study's, as a's


def test_a_detection_studys_augmentation_is_resolved_with_its_defaults(demo):
    from frelon.data.crops import detection_augment
    from frelon.spec import resolve

    small = small_config(demo)
    small["studies"]["boxes"]["detection"]["augment"] = {"flip": 0.25, "crop": "random"}
    augment = resolve(small, "results/runs/boxes/plain")["detection"]["augment"]
    assert augment == detection_augment({"flip": 0.25, "crop": "random"}) and augment["flip"] == 0.25
    assert set(augment) > {"flip", "crop"}  # every other key at its default
