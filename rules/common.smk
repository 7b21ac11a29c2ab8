# Input functions and names shared by the rules; every computation lives in src/frelon.
import json
import re
import shlex
import sys
import urllib.parse

from frelon import config as frelon_config
from frelon import spec as frelon_spec
from frelon.report import claims as frelon_claims
from frelon.launch.launcher import gpu_count

RUN = r"results/runs/[^/]+/[^/]+(?:/seed[0-9]+)?|data/demo/pretrain"
DETECTION = config.get("detection_data", {})
# Run folders of detection experiments (their evaluation writes more files); a regex that matches nothing if none
DETECTION_RUNS = (
    "|".join(re.escape(run) for run in frelon_spec.all_runs(config) if frelon_spec.task_of(config, run) == "detection")
    or "(?!)"
)
# Your own detection sets (detection_data entries with a format), prepared by prepare_detection
OWN_DETECTION = {name: entry for name, entry in DETECTION.items() if "format" in entry}
# Every archive of the config by its file name: data/archives/<file>
ARCHIVES = {frelon_config.archive_name(entry["url"]): entry for _, entry in frelon_config.archive_entries(config)}

# Scheduling, when the jobs run on this machine (not `--jobs` with a cluster executor, where every job
# has an allocation of its own; nor a Snakemake started inside a job):
# - GPUs: without `--resources gpu=N`, N is the number of GPUs present, so that GPU jobs wait in
#   Snakemake's queue rather than on the launcher's GPU locks. Without any, runs on `device: auto` take
#   none (they train on the CPU).
# - Timing jobs run alone, so that their timings are theirs: the machine is cut into one share per core
#   (`--resources machine=N` otherwise), every job takes one share (see the Snakefile) and a timing job
#   takes them all. One share per core never limits how many jobs run, as each takes a core at least.
#   Timing jobs: the checkpointing study, and the training runs of a study marked `timed` (scaling).
LOCAL = workflow.is_main_process and workflow.nodes is None
# Every core Snakemake may use (`--cores`); 1 where it counts none (a cluster: the allocation decides)
CORES = workflow.resource_settings.cores or 1
GPUS = gpu_count() if LOCAL else None  # None: not counted
if GPUS is not None and "gpu" not in workflow.global_resources:
    workflow.register_resource("gpu", GPUS)
elif GPUS is not None and workflow.global_resources["gpu"].value > GPUS:
    # more than there are: jobs would start and wait an hour for GPUs that never come free
    print(
        f"--resources gpu={workflow.global_resources['gpu'].value}: this machine shows {GPUS} GPU(s) "
        f"(CUDA_VISIBLE_DEVICES and the driver counted); using gpu={GPUS}",
        file=sys.stderr,
    )
    workflow.register_resource("gpu", GPUS)
if LOCAL and "machine" not in workflow.global_resources:
    workflow.register_resource("machine", CORES)
MACHINE = workflow.global_resources["machine"].value if LOCAL else 1
TIMED_RUNS = {
    run for name, study in config["studies"].items() if study.get("timed") for run in frelon_spec.all_runs(config, name)
}


wildcard_constraints:
    run=RUN,
    dataset="|".join(map(re.escape, config["datasets"])),
    study="|".join(map(re.escape, config["studies"])),
    file="|".join(map(re.escape, ARCHIVES)) or "^$",
    name=r"[^/]+",
    detection="|".join(map(re.escape, OWN_DETECTION)) or "(?!)",


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


def gpus(device, processes):
    """GPUs a job takes: one per process, none on the CPU (`device: cpu`, or `auto` where no GPU is present)."""
    return 0 if device == "cpu" or (device == "auto" and GPUS == 0) else processes


def run_gpus(wildcards):
    spec = run_spec(wildcards)
    return gpus(spec["device"], spec["train"]["world_size"])


def run_nodes(wildcards):
    """Nodes a run spreads over under SLURM (`train.nodes`); on one machine every rank runs there."""
    return frelon_spec.nodes_of(config, wildcards.run)


def run_cpus_per_gpu(wildcards):
    """CPUs per GPU (per rank) a run asks SLURM for: the rank's own, and one per loader worker (with
    `workers: auto`, a typical GPU's share of a node; the rank then uses what it was given)."""
    workers = run_spec(wildcards)["train"]["workers"]
    return frelon_spec.AUTO_CPUS_PER_RANK if workers == "auto" else workers + 1


def run_machine(wildcards):
    """The shares of the machine a run's training takes: all of them for a timed study's run, else one."""
    return MACHINE if wildcards.run in TIMED_RUNS else 1


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
            return f"--{key.replace('_', '-')} {shlex.quote(entry[key])}"


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
    subdir = source.get("subdir")
    return f"data/raw/{wildcards.dataset}/{subdir}" if subdir else f"data/raw/{wildcards.dataset}"


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


def own_detection_inputs(wildcards):
    """What your own detection set is made from: its YOLO folder, or its COCO files and image folders (checked
    now: its job is about to be scheduled)."""
    frelon_config.check_detection_source(config, wildcards.detection)
    entry = OWN_DETECTION[wildcards.detection]
    if entry["format"] == "yolo":
        return [entry["root"]]
    return [entry[split][key] for split in ("train", "val") for key in ("annotations", "images")]


def own_detection_arguments(wildcards, output):
    """`frelon prepare-detection`'s arguments for your own detection set, quoted for the shell."""
    entry, out = OWN_DETECTION[wildcards.detection], shlex.quote(output[0])
    if entry["format"] == "yolo":
        classes = f" --classes {shlex.quote(','.join(entry['classes']))}" if "classes" in entry else ""
        return f"yolo {shlex.quote(entry['root'])} {out}{classes}"
    files = " ".join(
        f"--{split}-{key} {shlex.quote(entry[split][key])}"
        for split in ("train", "val")
        for key in ("annotations", "images")
    )
    return f"coco {out} {files}"


def all_data():
    """The data products the studies use: weights, prepared (and augmented) datasets, detection sets."""
    used = frelon_config.used_datasets(config)
    return (
        expand("data/weights/{name}.pth", name=config["weights"])
        + expand("data/prepared/{dataset}", dataset=used)
        + expand("data/augmented/{dataset}", dataset=[d for d in config.get("augment", {}) if d in used])
    )


def study_references(wildcards):
    """Published numbers to show beside the study's measured ones, by experiment (labelled as references)."""
    experiments = config["studies"][wildcards.study]["experiments"]
    return json.dumps({name: e["reference"] for name, e in experiments.items() if "reference" in e})


def study_metrics(wildcards):
    return [f"{run}/metrics.json" for run in frelon_spec.all_runs(config, wildcards.study)]


def study_run_files(wildcards):
    """What the table reads beside each run's metrics.json: its spec.json and history.csv (declared, so that
    a run folder missing one is trained again rather than failing the table)."""
    return [
        f"{run}/{name}"
        for run in frelon_spec.all_runs(config, wildcards.study)
        for name in ("spec.json", "history.csv")
    ]


def study_runs(study):
    """A study's run folders: every experiment, every seed."""
    return frelon_spec.all_runs(config, study)


def scaling_studies():
    """Studies with runs on one process and on several: their table has a speed-up to plot."""
    out = []
    for study in config["studies"]:
        sizes = {frelon_spec.resolve(config, run)["train"]["world_size"] for run in study_runs(study)}
        if 1 in sizes and len(sizes) > 1:
            out.append(study)
    return out


def augment_settings(study):
    """The online augmentation settings a study's experiments use, when it varies them (else none)."""
    runs = [frelon_spec.resolve(config, run) for run in study_runs(study)]
    settings = [r["data"]["augment"] for r in runs if r["task"] == "classification"]
    distinct = list(dict.fromkeys(map(tuple, settings)))
    return [list(s) for s in distinct] if len(distinct) > 1 else []


def adversarial_runs():
    """The run folders the adversarial study attacks: its models' runs (a study with seeds: the first)."""
    adversarial = config["adversarial"]
    study = config["studies"][adversarial["study"]]
    seed = study.get("seeds", [None])[0]
    return {name: frelon_spec.run_dir(adversarial["study"], name, seed) for name in adversarial["models"]}


def report_figures():
    """Every figure the report shows, by the section it belongs to."""
    figures = {study: [f"results/figures/{study}.png"] for study in config["studies"]}
    for study in scaling_studies():
        figures[study].append(f"results/figures/{study}-scaling.png")
    for study in config["studies"]:
        if augment_settings(study):
            figures[study].append(f"results/figures/{study}-augment.png")
        figures[study] += [
            f"{run}/predictions.png"
            for run in frelon_spec.runs_by_experiment(config, study).values()
            for run in run[:1]
            if frelon_spec.task_of(config, run) == "detection"
        ]
    return figures
