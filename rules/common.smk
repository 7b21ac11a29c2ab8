# Input functions and names shared by the rules; every computation lives in src/frelon.
import urllib.parse

from frelon import spec as frelon_spec

RUN = r"results/runs/[^/]+/[^/]+|data/demo/pretrain"


wildcard_constraints:
    run=RUN,
    dataset=r"[^/]+",
    study=r"[^/]+",


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


def study_metrics(wildcards):
    return [f"{run}/metrics.json" for run in frelon_spec.all_runs(config, wildcards.study)]
