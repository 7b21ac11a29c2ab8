"""The SLURM profile on a real SLURM: a single-host cluster with two nodes and fake GPUs (slurm_cluster.py).

Part of the demo (a hornet study at world sizes 1 and 2, and a world-size-2 run spread over both nodes)
goes through `snakemake --profile profiles/slurm`, as a cluster user runs it, and is compared with a
local run of the same config. One training job is sent SLURM's warning signal mid-run: it saves, its
retry resumes, and it ends with the same weights as the uninterrupted local run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import slurm_cluster
from conftest import copy_workflow, run, started, succeeded, tool_env

pytestmark = pytest.mark.slow
STUDY = "cluster"
MEASURED = ["experiment", "init", "world_size", "n_test", "test_accuracy", "test_balanced_accuracy"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = slurm_cluster.missing()
    if reason:
        pytest.skip(reason)
    started = slurm_cluster.Cluster(tmp_path_factory.mktemp("slurm")).start()
    yield started
    started.stop()


def _config(work: Path, spread: bool = True) -> Path:
    config = yaml.safe_load((work / "config" / "demo.yaml").read_text())
    config["device"] = "auto"   # ask SLURM for GPUs; with no CUDA here the ranks train on the CPU (gloo)
    config["datasets"]["hornet"]["image_size"] = 32
    for key in ("claims", "adversarial"):  # on studies this config does not have
        config.pop(key, None)
    config["studies"] = {STUDY: {
        "dataset": "hornet",
        "model": {"arch": "resnet18", "weights": None},
        "train": {"epochs": 3, "batch_size": 8, "base_batch": 16, "base_lr": 0.02, "checkpoint_every": 2,
                  "workers": 0},
        "experiments": {
            "w1": {"train": {"world_size": 1}},
            "w2": {"train": {"world_size": 2}},
            # the same run as w2 (`nodes` is not in the spec), its ranks on two nodes
            **({"w2-nodes2": {"train": {"world_size": 2, "nodes": 2}}} if spread else {}),
        },
    }}
    path = work / "config" / "cluster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _profile(work: Path) -> str:
    """profiles/slurm with the edits a user of this cluster makes in its marked block, plus what this test
    cluster needs: no accounting database (job status from squeue), no accounts, quick status checks."""
    profile = yaml.safe_load((work / "profiles" / "slurm" / "profile.yaml").read_text())
    profile["default-resources"]["mem_mb"] = 2000
    for rule in profile["set-resources"].values():
        rule["mem_mb_per_cpu"] = 1000
        rule["runtime"] = 30
    profile.update({"slurm-status-command": "squeue", "slurm-no-account": True,
                    "slurm-init-seconds-before-status-checks": 1, "slurm-keep-successful-logs": True})
    (work / "profiles" / "test").mkdir()
    (work / "profiles" / "test" / "profile.yaml").write_text(yaml.safe_dump(profile))
    return "profiles/test"


def _job(job: str) -> dict[str, str]:
    """scontrol's record of a job (kept MinJobAge seconds after it ends)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _signal_when_training(work: Path, run_dirs: list[str], proc: subprocess.Popen, timeout: float = 240) -> list[str]:
    """Once each run has logged an epoch, send its SLURM job the warning signal; returns the job ids."""
    signalled: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while len(signalled) < len(run_dirs) and time.monotonic() < deadline and proc.poll() is None:
        jobs = subprocess.run(["squeue", "-h", "-o", "%i %k"], capture_output=True, text=True).stdout
        for run_dir in set(run_dirs) - set(signalled):
            log = work / run_dir / "train.log"
            if not (log.exists() and re.search(r"epoch\s+1\b", log.read_text())):
                continue
            wanted = re.sub(r"\W", "_", run_dir)
            for line in jobs.splitlines():
                job, _, comment = line.partition(" ")
                if comment.startswith("rule_train_") and re.sub(r"\W", "_", comment).endswith(wanted):
                    subprocess.run(["scancel", "--signal=USR1", job], check=True)
                    signalled[run_dir] = job
        time.sleep(0.5)
    missing = [r for r in run_dirs if r not in signalled]
    assert not missing, f"{missing} never reached a second epoch under SLURM"
    return list(signalled.values())


def test_the_profile_trains_on_a_real_slurm_like_a_local_run(cluster, tmp_path):
    # the local run to compare with (w2-nodes2 is w2 placed on two nodes, the same computation), beside the
    # SLURM run, at the lowest priority: it takes the CPU time the SLURM run leaves while it waits for SLURM
    # (Snakemake checks on SLURM jobs ever less often, so a slowed job can cost it half a minute)
    local = copy_workflow(tmp_path / "local")
    config = _config(local, spread=False)
    command = ["nice", "-n", "19", "snakemake", "--cores", "2", STUDY, "--configfile", str(config)]
    with started(command, local, tmp_path / "local.log") as local_run:
        _run_on_slurm(tmp_path, local, local_run)


def _run_on_slurm(tmp_path: Path, local: Path, local_run: subprocess.Popen) -> None:
    work = copy_workflow(tmp_path / "slurm")
    config = _config(work)
    run(["snakemake", "--cores", "2", "data/prepared/hornet", "--configfile", str(config)], cwd=work)
    record = tmp_path / "launches.jsonl"
    env = tool_env() | {"FRELON_LAUNCH_RECORD": str(record), "FRELON_FAKE_GPUS": "1"}
    cmd = ["snakemake", "--profile", _profile(work), STUDY, "--configfile", str(config), "--verbose"]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # the warning signal, to a one-node and a two-node run in the middle of their training
    signalled = _signal_when_training(work, [f"results/runs/{STUDY}/w2", f"results/runs/{STUDY}/w2-nodes2"], proc)
    out, _ = proc.communicate(timeout=600)
    (tmp_path / "slurm.log").write_text(out)
    assert proc.returncode == 0, out[-6000:]
    print(f"SLURM run: {time.monotonic() - started:.0f} s")

    # every training job (which also evaluates) went through sbatch, with the warning signal the profile asks for
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+)", out)
    assert len(submitted) == 3 + 2, out[-6000:]   # 3 trainings, the signalled ones again
    assert set(signalled) <= set(submitted)
    assert out.count("--signal=USR1@600") >= 5

    # each training ran its command once per node (twice for the signalled runs) with its world size in GPUs
    launches = [r for r in _records(record) if r["mode"] == "train"]
    by_run: dict[str, list[dict]] = {}
    for r in launches:
        by_run.setdefault(Path(r["spec"]).parent.name, []).append(r)
    assert sorted((name, len(rs)) for name, rs in by_run.items()) == [("w1", 1), ("w2", 2), ("w2-nodes2", 4)]
    for name, world in (("w1", 1), ("w2", 2)):
        for r in by_run[name]:
            assert r["slurm_job_id"] in submitted
            assert len(r["cuda_visible_devices"].split(",")) == world
    # with CPU binding (task/affinity), each node's ranks get the CPUs the job has there, not one
    for r in launches:
        job_cpus = int(_job(r["slurm_job_id"])["NumCPUs"]) // (2 if r in by_run["w2-nodes2"] else 1)
        assert r["cpus"] == min(job_cpus, os.cpu_count()) > 0, r
    spread = by_run["w2-nodes2"]
    for job in {r["slurm_job_id"] for r in spread}:   # each attempt: one agent per node, one GPU each
        assert sorted(r["node"] for r in spread if r["slurm_job_id"] == job) == ["n1", "n2"]
    assert all(len(r["cuda_visible_devices"].split(",")) == 1 for r in spread)
    assert "nodes" not in json.loads((work / f"results/runs/{STUDY}/w2-nodes2/spec.json").read_text())["train"]
    # concurrent jobs on one node never share a GPU (SLURM packs these jobs onto n1: some do overlap)
    jobs = {r["slurm_job_id"]: _job(r["slurm_job_id"]) for r in _records(record)}
    shared_node = 0
    for a in _records(record):
        for b in _records(record):
            ja, jb = jobs[a["slurm_job_id"]], jobs[b["slurm_job_id"]]
            if a["slurm_job_id"] < b["slurm_job_id"] and a["node"] == b["node"] and \
                    ja["StartTime"] < jb["EndTime"] and jb["StartTime"] < ja["EndTime"]:
                shared_node += 1
                assert not set(a["cuda_visible_devices"].split(",")) & set(b["cuda_visible_devices"].split(","))
    assert shared_node > 0

    # the signalled runs saved, stopped, and their retries resumed to the uninterrupted runs' weights
    succeeded(local_run)
    for name in ("w2", "w2-nodes2"):
        assert "resumed from" in (work / f"results/runs/{STUDY}/{name}/train.log").read_text()
    for name, same in (("w1", "w1"), ("w2", "w2"), ("w2-nodes2", "w2")):
        ours = torch.load(work / f"results/runs/{STUDY}/{name}/model.pt", weights_only=True)["model"]
        theirs = torch.load(local / f"results/runs/{STUDY}/{same}/model.pt", weights_only=True)["model"]
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name

    ours = pd.read_csv(work / "results" / "tables" / f"{STUDY}.csv").set_index("experiment")
    theirs = pd.read_csv(local / "results" / "tables" / f"{STUDY}.csv").set_index("experiment")
    columns = [c for c in MEASURED if c in theirs.columns and c != "experiment"]
    expected = theirs.loc[["w1", "w2", "w2"], columns].set_axis(["w1", "w2", "w2-nodes2"])
    pd.testing.assert_frame_equal(ours[columns], expected, check_names=False)
