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


def weights_local_files(wildcards):
    """The weights file and its checksum file when they are local (the demo's are made by a rule)."""
    entry = config["weights"][wildcards.name]
    return local_file(entry["url"]) + local_file(entry.get("sha256_url", ""))


def weights_hash_option(wildcards):
    """How `frelon fetch` learns the expected digest: given in the config, or in a checksum file."""
    entry = config["weights"][wildcards.name]
    return f"--sha256 {entry['sha256']}" if "sha256" in entry else f"--sha256-url {entry['sha256_url']}"


def study_metrics(wildcards):
    return [f"{run}/metrics.json" for run in frelon_spec.all_runs(config, wildcards.study)]
