"""Load and validate the pipeline configuration before any job runs."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from frelon.errors import FrelonError

# Rule names a study may not take: `snakemake <study>` builds that study's table.
RESERVED_TARGETS = ("all", "data", "runs", "report", "metrics", "spec", "train", "train_detection", "train_pretrain",
                    "evaluate", "evaluate_detection", "claims", "adversarial_study", "figures",
                    "study_table", "checkpointing_study", "fetch_weights", "fetch_archive", "extract",
                    "prepare_dataset", "augment", "prepare_voc", "prepare_coco", "prepare_detection", "demo_hornet",
                    "demo_hornet_detection", "demo_source", "demo_voc", "demo_coco", "demo_export_weights")


# Names that become folder and file names and reach shell commands unquoted (results/runs/<study>/<experiment>,
# data/prepared/<dataset>, data/archives/<file>): nothing a shell would read as syntax, no hidden or option-like name.
NAME = re.compile(r"\w[\w.-]*")
NAME_RULE = "letters, digits, '_', '.' and '-' ('.' and '-' not first)"


# The tables a claim can name beside the studies' (results/tables/<study>.csv): where each is written
OTHER_TABLES = {"checkpointing": "results/checkpointing/checkpointing.csv",
                "adversarial": "results/adversarial/attacks.csv", "patch": "results/adversarial/patch.csv"}

def _where(path: Any) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _explain(error: jsonschema.ValidationError) -> str:
    """One sentence that names the offending key and what would fix it."""
    where = _where(error.absolute_path)
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return f"config key {where}: missing required key {missing[0]!r}; add it (see config/demo.yaml)"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        return (f"config key {where}: unknown key {unknown[0]!r}; allowed keys are {', '.join(allowed)} "
                f"(a typo?)")
    return f"config key {where}: {error.message}"


def validate(config: dict, schema_path: str | os.PathLike) -> dict:
    """Raise a FrelonError naming the first bad key; return the config unchanged when it is valid."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), list(e.absolute_path)))
    if errors:
        raise FrelonError(_explain(errors[0]))
    _check_names(config)
    _check_references(config)
    return config


def _check_names(config: dict) -> None:
    """Studies, experiments, datasets, weights and downloaded files get names a shell and Snakemake take as
    they are; class names (folder names, passed quoted) only may not hold the comma that separates them."""
    named = [(f"datasets.{n}", n) for n in config["datasets"]]
    named += [(f"weights.{n}", n) for n in config.get("weights", {})]
    for s, study in config["studies"].items():
        named += [(f"studies.{s}", s)] + [(f"studies.{s}.experiments.{e}", e) for e in study["experiments"]]
    named += [(f"{where}.url", archive_name(entry["url"])) for where, entry in archive_entries(config)]
    for where, name in named:
        if not NAME.fullmatch(name):
            raise FrelonError(f"config key {where}: {name!r} may only hold {NAME_RULE}, as it becomes a folder or "
                              f"file name in shell commands; rename it"
                              + (" (the file name is the URL's last part: serve the file under a plain name)"
                                 if where.endswith(".url") else ""))
    for name, dataset in config["datasets"].items():
        for cls in dataset["classes"]:
            if "," in cls:
                raise FrelonError(f"config key datasets.{name}.classes: {cls!r} holds a comma, which separates class "
                                  f"names on the command line; rename the class folder")


def _check_references(config: dict) -> None:
    """Names used in studies must exist: datasets and weights entries; archives need distinct names."""
    datasets, weights = config["datasets"], config.get("weights", {})
    detection = config.get("detection_data", {})
    per_run = [key for key in ("weights", "head_only", "decoder") if key in config.get("model", {})]
    if per_run:
        raise FrelonError(f"config key model: {', '.join(per_run)} differ from study to study; set them under "
                          f"each study's or experiment's model (the top-level model holds arch, width, norm, "
                          f"residual and zero_init_residual for every run)")
    for name in datasets:
        if name in detection:
            raise FrelonError(f"config key datasets.{name}: the name {name!r} is taken by detection_data.{name} "
                              f"(both would be prepared into data/prepared/{name}); rename the dataset")
    for name in config.get("augment", {}):
        if name not in datasets:
            raise FrelonError(f"config key augment.{name}: no dataset {name!r} under datasets "
                              f"(defined: {', '.join(datasets)})")
    seen: dict[str, str] = {}
    for where, entry in archive_entries(config):
        file = archive_name(entry["url"])
        if file in seen and seen[file] != entry["url"]:
            raise FrelonError(f"config key {where}: two archives are both named {file!r} ({seen[file]} and "
                              f"{entry['url']}); each downloaded file needs its own name")
        seen[file] = entry["url"]
    for study in config["studies"]:
        if study in RESERVED_TARGETS:
            raise FrelonError(f"config key studies.{study}: the name {study!r} is taken by a pipeline target "
                              f"({', '.join(RESERVED_TARGETS)}); rename the study")
    runs = [(f"studies.{s}", part.get("dataset", study["dataset"]), part) for s, study in config["studies"].items()
            for part in [study, *study["experiments"].values()]]
    if "demo" in config:
        runs.append(("demo.pretrain", config["demo"]["pretrain"]["dataset"], config["demo"]["pretrain"]))
    for where, dataset, experiment in runs:
        if dataset in detection:
            _check_detection_experiment(where, experiment)
        elif dataset not in datasets:
            raise FrelonError(f"config key {where}: dataset {dataset!r} is not defined under datasets or "
                              f"detection_data (defined: {', '.join([*datasets, *detection])})")
        elif "detection" in experiment or "decoder" in experiment.get("model", {}):
            raise FrelonError(f"config key {where}: detection and model.decoder apply to detection studies "
                              f"(a dataset of detection_data), not to {dataset!r}; remove them")
        if experiment.get("augmented") and dataset not in config.get("augment", {}):
            raise FrelonError(f"config key {where}: augmented: true, but augment has no entry for {dataset!r}; "
                              f"add augment.{dataset} (e.g. {{multiplier: 4}}) or drop augmented")
        name = experiment.get("model", {}).get("weights")
        if name is not None and name not in weights:
            raise FrelonError(f"config key {where}: weights {name!r} are not defined under weights "
                              f"(defined: {', '.join(weights) or 'none'})")
    _check_studies_of_studies(config)


def _check_studies_of_studies(config: dict) -> None:
    """The adversarial study attacks experiments of a classification study; claims read tables that exist."""
    studies, detection = config["studies"], config.get("detection_data", {})
    if "adversarial" in config:
        adversarial = config["adversarial"]
        study = studies.get(adversarial["study"])
        if study is None or study["dataset"] in detection:
            raise FrelonError(f"config key adversarial.study: {adversarial['study']!r} is not a classification study "
                              f"(studies: {', '.join(studies)})")
        for name in [*adversarial["models"], *([adversarial["patch_model"]] if "patch_model" in adversarial else [])]:
            if name not in study["experiments"]:
                raise FrelonError(f"config key adversarial: {name!r} is not an experiment of study "
                                  f"{adversarial['study']!r} (it has {', '.join(study['experiments'])})")
        classes = config["datasets"][study["dataset"]]["classes"]
        for key in ("patch_source", "patch_target"):
            if key in adversarial and adversarial[key] not in classes:
                raise FrelonError(f"config key adversarial.{key}: {adversarial[key]!r} is not a class of "
                                  f"{study['dataset']!r} ({', '.join(classes)})")
    tables = {*studies, *(name for name in OTHER_TABLES if name in config or name == "patch" and "adversarial" in config)}
    for i, claim in enumerate(config.get("claims", [])):
        for side in ("a", "b"):
            if claim[side]["table"] not in tables:
                raise FrelonError(f"config key claims[{i}].{side}.table: no table {claim[side]['table']!r} in this "
                                  f"config (tables: {', '.join(sorted(tables))})")


def _check_detection_experiment(where: str, experiment: dict) -> None:
    """Keys that only mean something for classification are refused on a detection run."""
    model = experiment.get("model", {})
    wrong = [f"model.{k}" for k in ("head_only", "zero_init_residual") if model.get(k)]
    wrong += ["augmented"] if experiment.get("augmented") else []
    wrong += ["augment"] if "augment" in experiment else []
    wrong += ["model.norm"] if model.get("norm", "batch") != "batch" else []
    wrong += ["model.residual"] if model.get("residual") is False else []
    if wrong:
        raise FrelonError(f"config key {where}: {', '.join(wrong)} do not apply to a detection study (CenterNet "
                          f"on a residual, batch-norm backbone; online augmentation under detection.augment); "
                          f"remove them")


def check_source(config: dict, name: str, pipeline_dir: str | os.PathLike = "data") -> None:
    """Check, before any job uses it, a dataset folder the user supplies (not one the pipeline writes)."""
    from frelon.data.folder import scan

    dataset = config["datasets"][name]
    if isinstance(dataset["source"], str) and not Path(dataset["source"]).resolve().is_relative_to(
            Path(pipeline_dir).resolve()):
        try:
            scan(dataset["source"], dataset["classes"])
        except FrelonError as exc:
            raise FrelonError(f"config key datasets.{name}.source: {exc}") from None


def check_detection_source(config: dict, name: str, pipeline_dir: str | os.PathLike = "data") -> None:
    """Check, before any job uses them, the folders and files of your own detection set (not those the
    pipeline writes, as the demo's): a YOLO export's folder, or the COCO files and their image folders."""
    entry = config["detection_data"][name]
    if entry["format"] == "yolo":
        paths = {"root": entry["root"]}
    else:
        paths = {f"{split}.{key}": entry[split][key] for split in ("train", "val") for key in ("annotations", "images")}
    for key, path in paths.items():
        if not Path(path).resolve().is_relative_to(Path(pipeline_dir).resolve()) and not Path(path).exists():
            what = "your YOLO export's folder (data.yaml, images/, labels/)" if key == "root" else (
                "a COCO instances JSON file" if key.endswith("annotations") else "the folder of that split's images")
            raise FrelonError(f"config key detection_data.{name}.{key}: {path} does not exist; point it at {what}")


def used_datasets(config: dict) -> list[str]:
    """Datasets and detection sets that some study (or the demo's pretraining) trains on, in config order."""
    used = {e.get("dataset", study["dataset"]) for study in config["studies"].values()
            for e in study["experiments"].values()}
    if "demo" in config:
        used.add(config["demo"]["pretrain"]["dataset"])
    return [name for name in [*config["datasets"], *config.get("detection_data", {})] if name in used]


def archive_name(url: str) -> str:
    """The file name a URL downloads to (`data/archives/<name>`)."""
    import posixpath
    import urllib.parse

    return posixpath.basename(urllib.parse.urlparse(url).path)


def archive_entries(config: dict) -> list[tuple[str, dict]]:
    """(config key, download entry) of every archive the config names: dataset sources, VOC, COCO."""
    entries = [(f"datasets.{name}.source.archive", d["source"]["archive"])
               for name, d in config["datasets"].items() if isinstance(d["source"], dict)]
    for kind, section in config.get("detection_data", {}).items():
        entries += [(f"detection_data.{kind}.archives[{i}]", a) for i, a in enumerate(section.get("archives", []))]
    return entries
