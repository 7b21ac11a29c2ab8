"""Resolve one experiment of the config into a spec: everything needed to rerun it, nothing implicit."""

from __future__ import annotations

import copy
import os

from frelon.data.crops import detection_augment
from frelon.errors import FrelonError
from frelon.models import IMAGENET_MEAN, IMAGENET_STD
from frelon.train.schedules import scaled_lr, warmup_start_factor

RUNS_DIR = "results/runs"
MODEL_DEFAULTS = {"arch": "resnet18", "weights": None, "norm": "batch", "residual": True,
                  "zero_init_residual": False, "head_only": False}
# CenterNet (Zhou et al. 2019): max_objects 128 on COCO (VOC: 50; an image with more trains on its first
# max_objects, counted), loss weights size 0.1 and offset 1, top 100 peaks; min_overlap as CornerNet's
# radius rule (mmdetection uses 0.3); evaluation letterboxes into the square input, or with
# test_resolution: keep takes the image at its own size padded to a multiple of 32 (the paper's --keep_res);
# crowd regions (COCO) and difficult objects (VOC) trained on as objects, as the official code reads every
# annotation (crowd: drop leaves them out of the targets, mmdetection's way); scoring ignores them either way.
DETECTION_DEFAULTS = {"input_size": 512, "test_resolution": "letterbox", "max_objects": 128,
                      "too_many_objects": "keep_first", "crowd": "train", "min_overlap": 0.7, "flip_test": False, "top_k": 100,
                      "size_weight": 0.1, "offset_weight": 1.0, "augment": {}}
PRETRAIN_RUN = "data/demo/pretrain"
# What a rank asks SLURM for with `train.workers: auto` (its own CPU and its loader workers'): a GPU's
# share of a typical 8-GPU node; the rank then starts as many workers as it was given CPUs, less one.
AUTO_CPUS_PER_RANK = 8
# What a study sets for all its experiments (an experiment's own value wins)
SHARED_KEYS = ("model", "train", "augmented", "augment", "detection")
# Online augmentation of classification training images (frelon.data.dataset): every run mirrors unless told
DEFAULT_AUGMENT = ["mirror"]


def prepared_dir(dataset: str) -> str:
    return f"data/prepared/{dataset}"


def augmented_dir(dataset: str) -> str:
    return f"data/augmented/{dataset}"


def weights_path(name: str) -> str:
    return f"data/weights/{name}.pth"


def run_dir(study: str, experiment: str, seed: int | None = None) -> str:
    """`results/runs/<study>/<experiment>`, and `/seed<N>` below it in a study that lists `seeds`."""
    return f"{RUNS_DIR}/{study}/{experiment}" + ("" if seed is None else f"/seed{seed}")


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def preprocessing(dataset: dict, weights: dict) -> dict:
    """What every image goes through before the model, in training and evaluation alike: shorter side
    resized to `resize`, centre crop `crop`, then normalised with the weights' mean and std (ImageNet's
    for torchvision's weights and for random init)."""
    return {"resize": dataset.get("resize", dataset["image_size"]), "crop": dataset["image_size"],
            "mean": list(weights.get("mean", IMAGENET_MEAN)), "std": list(weights.get("std", IMAGENET_STD))}


def all_runs(config: dict, only_study: str | None = None) -> list[str]:
    """Run folders of every experiment of every study (or of `only_study`), in config order: one per
    seed in a study that lists `seeds`."""
    return [run_dir(s, e, seed) for s, study in config["studies"].items() if only_study in (None, s)
            for e in study["experiments"] for seed in study.get("seeds", [None])]


def runs_by_experiment(config: dict, study: str) -> dict[str, list[str]]:
    """A study's run folders grouped by experiment (several with `seeds`), in config order."""
    seeds = config["studies"][study].get("seeds", [None])
    return {e: [run_dir(study, e, seed) for seed in seeds] for e in config["studies"][study]["experiments"]}


def _locate(config: dict, run: str) -> tuple[str, str, dict, dict, int]:
    """(experiment name, dataset, study-wide overrides, experiment overrides, seed) of a run folder."""
    if run == PRETRAIN_RUN and "demo" in config:
        pretrain = config["demo"]["pretrain"]
        return "pretrain/demo", pretrain["dataset"], {}, pretrain, config["seed"]
    run = os.path.normpath(run)
    if run not in all_runs(config):
        raise FrelonError(f"{run} is not a run of this config: expected {RUNS_DIR}/<study>/<experiment>, "
                          f"and /seed<N> below it for each N of the study's seeds if it lists them")
    study, name, *seed = os.path.relpath(run, RUNS_DIR).split(os.sep)
    studies = config["studies"]
    shared = {key: studies[study][key] for key in SHARED_KEYS if key in studies[study]}
    experiment = studies[study]["experiments"][name]
    seed = int(seed[0].removeprefix("seed")) if seed else config["seed"]
    return f"{study}/{name}", experiment.get("dataset", studies[study]["dataset"]), shared, experiment, seed


def nodes_of(config: dict, run: str) -> int:
    """The nodes a run spreads over under SLURM (`train.nodes`). Kept out of the spec: placing the same
    ranks elsewhere changes no number, so it retrains nothing and a saved state still resumes."""
    _, _, shared, overrides, _ = _locate(config, run)
    return _merge(_merge(config["train"], shared.get("train", {})), overrides.get("train", {})).get("nodes", 1)


def task_of(config: dict, run: str) -> str:
    """`detection` for a run on a detection_data set, else `classification`."""
    return "detection" if _locate(config, run)[1] in config.get("detection_data", {}) else "classification"


def resolve(config: dict, run: str) -> dict:
    """The spec of the run in folder `run`."""
    experiment, dataset_name, shared, overrides, seed = _locate(config, run)
    train = _merge(_merge(config["train"], shared.get("train", {})), overrides.get("train", {}))
    train.pop("nodes", None)  # where the ranks run, not what they compute: see nodes_of
    # config.model: defaults for every run (the demo's narrower ResNets); a key it does not set stays out of
    # the spec, so that the spec of a config without it is unchanged
    model = _merge(_merge(_merge(MODEL_DEFAULTS, config.get("model", {})), shared.get("model", {})),
                   overrides.get("model", {}))
    global_batch = train["batch_size"] * train["world_size"] * train["accumulate"]
    train["global_batch"] = global_batch
    train["lr"] = (scaled_lr(train["base_lr"], global_batch, train["base_batch"])
                   if train["lr_scaling"] == "linear" else train["base_lr"])
    train["lr_schedule"].setdefault("warmup_start_factor",  # written out: spec.json shows where warmup began
                                    warmup_start_factor(train["lr_scaling"], global_batch, train["base_batch"]))
    weights = config["weights"].get(model["weights"], {})
    path = weights_path(model["weights"]) if model["weights"] else None
    if task_of(config, run) == "detection":
        detection = _merge(_merge(DETECTION_DEFAULTS, shared.get("detection", {})), overrides.get("detection", {}))
        detection["augment"] = detection_augment(detection["augment"])
        return {"experiment": experiment, "task": "detection", "seed": seed,
                "device": config.get("device", "auto"), "output": run,
                "data": {"dir": prepared_dir(dataset_name), "kind": dataset_name, "augmented": False,
                         "preprocessing": {"input_size": detection["input_size"],
                                           "mean": list(weights.get("mean", IMAGENET_MEAN)),
                                           "std": list(weights.get("std", IMAGENET_STD))}},
                "model": {"decoder": "deconv", **model, "weights_path": path}, "detection": detection, "train": train}
    if model["head_only"] and not model["weights"]:
        raise FrelonError(f"{experiment}: model.head_only trains a new head on a pretrained backbone; "
                          f"set model.weights to a weights entry, or head_only: false")
    dataset = config["datasets"][dataset_name]
    augmented = overrides.get("augmented", shared.get("augmented", False))
    # Keys in this order: Snakemake compares the spec rule's params as text, so a new order would retrain every run
    return {
        "experiment": experiment,
        "task": "classification",
        "seed": seed,
        "device": config.get("device", "auto"),
        "output": run,
        "data": {
            "dir": augmented_dir(dataset_name) if augmented else prepared_dir(dataset_name),
            "augmented": augmented,
            "augment": list(overrides.get("augment", shared.get("augment", DEFAULT_AUGMENT))),
            "classes": list(dataset["classes"]),
            "preprocessing": preprocessing(dataset, weights),
        },
        "model": {**model, "num_classes": len(dataset["classes"]), "weights_path": path},
        "train": train,
    }
