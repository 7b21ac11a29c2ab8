"""Kill anything, at any moment: the pipeline (a trimmed demo that keeps every kind of job: data generation
and preparation, the weights' fetch, specs, training on one and two processes, detection, a study's table and
figure, the report) is run while random processes of its tree are killed with SIGKILL: Snakemake itself, a
job's shell, a launcher, the warm server, a supervisor, a rank, a data job. After each kill Snakemake is run
again as a user would (`snakemake --unlock` after a killed Snakemake, then the same command) until it
completes. The tables, metrics.json files and weights then equal an uninterrupted run's, no process is left
behind, and no partial file is left in results/ or data/."""

from __future__ import annotations

import contextlib
import json
import random
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch
import yaml

from conftest import copy_workflow, run, started, succeeded, tool_env
from frelon.launch import warm

pytestmark = pytest.mark.slow

SEEDS = {1: "1", 2: "0"}  # seed: FRELON_WARM (runs forked from the warm server, or started cold: torchrun)
KILLS_PER_SEED = 10  # 20 kills across the two seeds
COMMAND = ["snakemake", "--cores", "2", "--configfile", "config/kill.yaml"]
# what differs between two runs of the same config: times, speeds, memory peaks
TIMING = re.compile(r"seconds|per_second|_ms$|^time|throughput|wait|memory|speedup")


def kill_config(work: Path) -> None:
    """The demo shrunk to seconds a job, with a job of every kind."""
    config = yaml.safe_load((work / "config" / "demo.yaml").read_text())
    demo = config["demo"]
    demo["hornet"] = {"presence": 20, "absence": 28, "image_size": 48}
    demo["source"] = {"per_class": 12, "image_size": 48}
    demo["pretrain"]["train"] = {"epochs": 2, "base_lr": 0.05, "world_size": 1, "batch_size": 16}
    demo["hornet_detection"] = {"images": 24, "image_size": 64}
    demo["voc"], demo["coco"] = {"images_per_set": 8, "image_size": 48}, {"train": 8, "image_size": 48}
    for key in ("voc", "coco"):
        config["detection_data"].pop(key)
    for key in ("checkpointing", "adversarial", "claims", "augment"):
        config.pop(key)
    config["train"]["checkpoint_minutes"] = 0  # a resumable state every epoch: kills land between and within
    detection = config["studies"]["detection"]
    config["studies"] = {
        "finetune": {"dataset": "hornet", "seeds": [0], "train": {"epochs": 2, "base_batch": 16, "batch_size": 8},
                     "experiments": {
                         "pretrained": {"model": {"arch": "resnet18", "weights": "resnet18"},
                                        "train": {"world_size": 1}},
                         "random": {"model": {"arch": "resnet18", "weights": None}, "train": {"world_size": 2}}}},
        "detection": {**detection, "dataset": "hornet_traps", "experiments": {"hornet-unet": {}},
                      "train": {**detection["train"], "epochs": 2, "batch_size": 8}},
    }
    (work / "config" / "kill.yaml").write_text(yaml.safe_dump(config))


def candidates(snakemake: psutil.Process, warm_folder: Path) -> list[tuple[psutil.Process, str]]:
    """The processes a kill may hit, each with what it is: Snakemake and everything under it, the warm
    servers and theirs."""
    found = []
    try:
        found += [(snakemake, "snakemake")] + [(p, describe(p)) for p in snakemake.children(recursive=True)]
    except psutil.Error:
        pass
    for pid_file in warm_folder.glob("*.pid"):
        try:
            server = psutil.Process(int(pid_file.read_text()))
            found.append((server, "warm server"))
            for supervisor in server.children():
                found += [(supervisor, "warm supervisor")] + [(r, "warm rank") for r in supervisor.children()]
        except (ValueError, OSError, psutil.Error):
            pass
    return [(p, kind) for p, kind in found if p.is_running()]


def describe(process: psutil.Process) -> str:
    try:
        cmd = " ".join(process.cmdline())
    except psutil.Error:
        return "gone"
    for pattern, name in (("bin/bash", "job shell"), (".snakemake/scripts", "script job"),
                          ("frelon.launch.worker", "rank"), ("torch.distributed.run", "torchrun"),
                          ("frelon train", "launcher"), ("frelon.launch.warm", "warm server"), ("frelon", "data job")):
        if pattern in cmd:
            return name
    return cmd[:40]


def run_with_kills(work: Path, rng: random.Random, wanted: int, warm_folder: Path, log, env: dict) -> list[str]:
    """Run the pipeline to completion, killing random processes at random moments while fewer than `wanted`
    kills were made (several in one Snakemake run: it waits for the jobs still running after a failed one);
    the kinds of process killed."""
    kills: list[str] = []
    for _ in range(wanted + 10):
        proc = subprocess.Popen(COMMAND, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        killed_snakemake = False
        while len(kills) < wanted and not killed_snakemake:
            try:
                proc.wait(timeout=rng.uniform(1.5, 4.5))
                break
            except subprocess.TimeoutExpired:
                pass
            pool = candidates(psutil.Process(proc.pid), warm_folder)
            if len(pool) == 1 and rng.random() < 0.75:
                continue  # Snakemake alone, starting: three such moments in four wait for its jobs to start
            victim, kind = rng.choice(pool)
            with contextlib.suppress(psutil.Error):
                victim.kill()
                kills.append(kind)
                killed_snakemake = victim.pid == proc.pid
        code = proc.wait(timeout=600)
        if killed_snakemake:
            run(COMMAND[:1] + ["--unlock"] + COMMAND[1:], cwd=work)
        elif code == 0:
            return kills
    raise AssertionError(f"the pipeline never completed after {len(kills)} kills: {kills}")


def left_processes(work: Path) -> list[psutil.Process]:
    """Processes still working in `work` (orphans of a killed Snakemake finish their job, then go)."""
    found = []
    for process in psutil.process_iter():
        try:
            if Path(process.cwd()).is_relative_to(work):
                found.append(process)
        except (psutil.Error, OSError):
            pass
    return found


def outcome(work: Path) -> dict:
    """What the pipeline computed, without the times and speeds that differ between two runs."""
    result = {}
    for path in sorted((work / "results").rglob("metrics.json")):
        data = json.loads(path.read_text())
        flat = pd.json_normalize(data).iloc[0].to_dict() if isinstance(data, dict) else data
        result[str(path.relative_to(work))] = {k: v for k, v in flat.items() if not TIMING.search(k.split(".")[-1])}
    for path in sorted((work / "results" / "tables").glob("*.csv")):
        table = pd.read_csv(path)
        table = table[[c for c in table.columns if not TIMING.search(c)]]
        result[str(path.relative_to(work))] = table.astype(object).where(table.notna(), None).to_dict("list")
    for path in sorted((work / "results" / "runs").rglob("model.pt")):
        result[str(path.relative_to(work))] = torch.load(path, weights_only=True)["model"]
    return result


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if key.endswith("model.pt"):
            assert a[key].keys() == b[key].keys(), key
            for name in a[key]:
                assert torch.equal(a[key][name], b[key][name]), f"{key}: {name}"
        else:
            assert a[key] == b[key], key


def killed_pipeline(tmp_path: Path, seed: int, warm_setting: str, warm_folder: Path) -> tuple[Path, list[str]]:
    """A copy of the pipeline run to completion under kills; its folder and the kinds of process killed."""
    work = copy_workflow(tmp_path / f"killed{seed}")
    kill_config(work)
    with open(tmp_path / f"killed{seed}.log", "w") as log:
        kills = run_with_kills(work, random.Random(seed), KILLS_PER_SEED, warm_folder, log,
                               {**tool_env(), "FRELON_WARM": warm_setting})
    return work, kills


def test_a_pipeline_killed_anywhere_again_and_again_completes_with_the_uninterrupted_results(tmp_path, warm_servers):
    # the uninterrupted run and the killed ones side by side (on two cores most of each run's time is
    # start-ups and waits: together they take little more than the longest alone); the uninterrupted one
    # has a warm server of its own, which no kill reaches
    whole = copy_workflow(tmp_path / "whole")
    kill_config(whole)
    whole_warm = tmp_path / "warm-whole"
    whole_warm.mkdir(mode=0o700)
    try:
        own_server = {**tool_env(), warm.DIR_VAR: str(whole_warm)}
        with started(COMMAND, whole, tmp_path / "whole.log", own_server) as reference:
            with ThreadPoolExecutor(len(SEEDS)) as pool:
                killed = [pool.submit(killed_pipeline, tmp_path, seed, how, warm_servers)
                          for seed, how in SEEDS.items()]
                killed = [future.result() for future in killed]
            succeeded(reference)
    finally:
        warm.stop(whole_warm)
    expected = outcome(whole)
    assert any(k.endswith("random/seed0/model.pt") for k in expected)  # two processes
    assert any("hornet-unet" in k for k in expected) and (whole / "results" / "report.md").exists()

    survived = []
    for work, kills in killed:
        survived += kills
        deadline = time.monotonic() + 120
        while left_processes(work):
            assert time.monotonic() < deadline, [p.cmdline() for p in left_processes(work)]
            time.sleep(0.5)
        partial = [str(p.relative_to(work)) for folder in ("results", "data") for p in (work / folder).rglob("*")
                   if p.name.endswith((".tmp", ".part"))]
        assert not partial, partial
        assert_same(outcome(work), expected)
    # every file a rule reads is one of its inputs: a run folder that lost its history.csv (a job killed as it
    # ended) is trained again before its study's table is made, rather than failing the table
    (whole / "results" / "runs" / "finetune" / "random" / "seed0" / "history.csv").unlink()
    (whole / "results" / "tables" / "finetune.csv").unlink()
    dry = run(COMMAND[:1] + ["results/tables/finetune.csv", "-n"] + COMMAND[1:], cwd=whole).stdout
    assert "rule train:" in dry and "Missing output files: results/runs/finetune/random/seed0/history.csv" in dry
    assert "rule study_table:" in dry

    kinds = ", ".join(f"{kind} x{survived.count(kind)}" for kind in sorted(set(survived)))
    print(f"survived {len(survived)} kills: {kinds}")
    assert len(survived) >= 20, kinds
