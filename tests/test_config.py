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
