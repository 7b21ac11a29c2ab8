# Input functions and names shared by the rules; every computation lives in src/frelon.
import json
import re
import urllib.parse

from frelon import config as frelon_config
from frelon import spec as frelon_spec

RUN = r"results/runs/[^/]+/[^/]+|data/demo/pretrain"
DETECTION = config.get("detection_data", {})
# Run folders of detection experiments (their evaluation writes more files); a regex that matches nothing if none
DETECTION_RUNS = "|".join(
    re.escape(run) for run in frelon_spec.all_runs(config) if frelon_spec.task_of(config, run) == "detection"
) or "(?!)"
# Every archive of the config by its file name: data/archives/<file>
ARCHIVES = {frelon_config.archive_name(entry["url"]): entry for _, entry in frelon_config.archive_entries(config)}


wildcard_constraints:
    run=RUN,
    dataset="|".join(map(re.escape, config["datasets"])),
    study=r"[^/]+",
    file="|".join(map(re.escape, ARCHIVES)) or "^$",
    name=r"[^/]+",


def run_spec(wildcards):
    return frelon_spec.resolve(config, wildcards.run)


def run_inputs(wildcards):
    """What a run reads: its prepared dataset and, when it starts from weights, the weights file."""
    spec = run_spec(wildcards)
    inputs = {"data": spec["data"]["dir"]}
    if spec["model"]["weights_path"]:
        inputs["weights"] = spec["model"]["weights_path"]
    return inputs


def run_world_size(wildcards):
    return run_spec(wildcards)["train"]["world_size"]


def run_gpus(wildcards):
    """GPUs a run takes: one per process, none when the config pins it to the CPU."""
    spec = run_spec(wildcards)
    return 0 if spec["device"] == "cpu" else spec["train"]["world_size"]


def local_file(url):
    """The path behind a `file:` URL (so the DAG knows which rule makes it), else nothing."""
    parsed = urllib.parse.urlparse(url)
    return [parsed.netloc + parsed.path] if parsed.scheme == "file" else []


def download_local_files(entry):
    """A download's file and checksum file when they are local (the demo's are made by rules)."""
    return local_file(entry["url"]) + local_file(entry.get("sha256_url", ""))


def hash_option(entry):
    """How `frelon fetch` learns the expected digest: in the config (SHA-256 or MD5) or a checksum file."""
    for key in ("sha256", "md5", "sha256_url"):
        if key in entry:
            return f"--{key.replace('_', '-')} {entry[key]}"


def weights_local_files(wildcards):
    return download_local_files(config["weights"][wildcards.name])


def weights_hash_option(wildcards):
    return hash_option(config["weights"][wildcards.name])


def archive_local_files(wildcards):
    return download_local_files(ARCHIVES[wildcards.file])


def archive_hash_option(wildcards):
    return hash_option(ARCHIVES[wildcards.file])


def extract_inputs(wildcards):
    """The archives extracted into data/raw/<name>: a dataset's, or VOC's or COCO's."""
    if wildcards.name in config["datasets"]:
        source = config["datasets"][wildcards.name]["source"]
        entries = [source["archive"]] if isinstance(source, dict) else []
    else:
        entries = DETECTION.get(wildcards.name, {}).get("archives", [])
    if not entries:
        raise ValueError(f"data/raw/{wildcards.name}: nothing in the config is extracted there")
    return [f"data/archives/{frelon_config.archive_name(e['url'])}" for e in entries]


def dataset_source(wildcards):
    """Where a dataset's class folders are: the user's folder, or inside its extracted archive."""
    source = config["datasets"][wildcards.dataset]["source"]
    if isinstance(source, str):
        return source
    return f"data/raw/{wildcards.dataset}" + (f"/{source['subdir']}" if source.get("subdir") else "")


def dataset_input(wildcards):
    """A dataset's folder (checked now: its job is about to be scheduled) or its extracted archive."""
    frelon_config.check_source(config, wildcards.dataset)
    source = config["datasets"][wildcards.dataset]["source"]
    return source if isinstance(source, str) else f"data/raw/{wildcards.dataset}"


def voc_input(wildcards):
    """A VOCdevkit folder you already have (`detection_data.voc.devkit`), or where the archives extract."""
    return DETECTION["voc"].get("devkit", "data/raw/voc")


def voc_devkit(wildcards):
    return DETECTION["voc"].get("devkit", "data/raw/voc/VOCdevkit")


def coco_root(wildcards):
    """The COCO 2017 folder: one you already have (`detection_data.coco.root`), or the archives' extracted one."""
    return DETECTION["coco"].get("root", "data/raw/coco")


def all_data():
    """The data products the studies use: weights, prepared (and augmented) datasets, detection sets."""
    used = frelon_config.used_datasets(config)
    return (expand("data/weights/{name}.pth", name=config["weights"])
            + expand("data/prepared/{dataset}", dataset=used)
            + expand("data/augmented/{dataset}", dataset=[d for d in config.get("augment", {}) if d in used]))


def study_references(wildcards):
    """Published numbers to show beside the study's measured ones, by experiment (labelled as references)."""
    experiments = config["studies"][wildcards.study]["experiments"]
    return json.dumps({name: e["reference"] for name, e in experiments.items() if "reference" in e})


def study_metrics(wildcards):
    return [f"{run}/metrics.json" for run in frelon_spec.all_runs(config, wildcards.study)]
