"""Warm starts (frelon.train.warm): a CPU run forked from a server that imported everything once trains
the weights a cold start trains, on one process or two; a killed launcher's ranks save and the rerun
resumes; the server is shared, private to its user and optional."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from conftest import tool_env
from engine_fixtures import make_spec, prepared_hornet
from frelon.train import warm

TRAIN = {"epochs": 2, "batch_size": 4, "base_batch": 8}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepared_hornet(tmp_path_factory.mktemp("hornet"), presence=10, absence=14)


def train(run_dir, warm_start: bool, threads: int = 2, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "frelon.cli", "train", str(run_dir / "spec.json"), "--metrics",
                             str(run_dir / "metrics.json"), "--threads", str(threads)],
                            env={**tool_env(), "FRELON_WARM": "1" if warm_start else "0", **env},
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, code: int = 0) -> str:
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == code, output
    return output


def weights(run_dir) -> dict:
    return torch.load(run_dir / "model.pt", weights_only=True)["model"]


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def server_pids(folder) -> list[int]:
    return [int(p.read_text()) for p in folder.glob("*.pid")]


def cold_and_warm(data, tmp_path, world_size):
    runs = {}
    for name in ("cold", "warm"):
        runs[name] = tmp_path / name
        make_spec(data, runs[name], world_size=world_size, **TRAIN)
        finish(train(runs[name], warm_start=name == "warm", FRELON_LAUNCH_RECORD=str(tmp_path / "launches.jsonl")))
    assert_same(weights(runs["cold"]), weights(runs["warm"]))
    metrics = [json.loads((runs[n] / "metrics.json").read_text()) for n in runs]
    assert metrics[0]["accuracy"] == metrics[1]["accuracy"] and metrics[0]["experiment"] == metrics[1]["experiment"]
    records = [json.loads(line) for line in (tmp_path / "launches.jsonl").read_text().splitlines()]
    assert [r.get("warm", False) for r in records] == [False, True]
    return runs


def test_a_warm_run_trains_the_weights_of_a_cold_start_and_later_runs_share_its_server(data, tmp_path,
                                                                                          warm_servers):
    runs = cold_and_warm(data, tmp_path, world_size=1)
    [pid] = server_pids(warm_servers)
    again = tmp_path / "again"
    make_spec(data, again, world_size=1, **TRAIN)
    finish(train(again, warm_start=True))
    assert server_pids(warm_servers) == [pid]  # the same server: nothing imported twice
    assert_same(weights(again), weights(runs["warm"]))
    assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


@pytest.mark.slow  # a cold torchrun start: about 15 s
def test_two_warm_ranks_train_the_weights_of_torchrun_ranks(data, tmp_path):
    cold_and_warm(data, tmp_path, world_size=2)


def descendants(folder) -> list[psutil.Process]:
    return [child for pid in server_pids(folder) for child in psutil.Process(pid).children(recursive=True)]


@pytest.mark.slow  # three trainings: about 20 s
def test_a_killed_launchers_warm_ranks_save_and_the_rerun_resumes_to_the_same_weights(data, tmp_path, warm_servers):
    settings = {**TRAIN, "epochs": 4, "world_size": 2}
    whole = tmp_path / "whole"
    make_spec(data, whole, **settings)
    finish(train(whole, warm_start=True))

    run = tmp_path / "killed"
    make_spec(data, run, **settings)
    proc = train(run, warm_start=True)
    deadline = time.monotonic() + 120
    while not (run / "state" / "last.pt").exists():  # a state saved: an epoch is done
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.1)
    ranks = descendants(warm_servers)
    assert len(ranks) >= 2  # the supervisor and its ranks: children of the server, not of the launcher
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(ranks, timeout=60)  # they saw the launcher go, saved and exited
    assert not alive
    assert not (run / "model.pt").exists() and (run / "state" / "last.pt").exists()

    output = finish(train(run, warm_start=True))
    assert "resumed from" in output
    assert_same(weights(run), weights(whole))


def test_sigterm_reaches_warm_ranks_which_save_and_exit_75(data, tmp_path):
    make_spec(data, tmp_path, **{**TRAIN, "epochs": 50, "world_size": 1})
    proc = train(tmp_path, warm_start=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "state" / "last.pt").exists():  # training, past its first epoch
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # as SLURM or Snakemake would
    output = finish(proc, code=75)
    assert "state saved" in output and (tmp_path / "state" / "last.pt").exists()


def test_no_warm_server_where_the_folder_is_not_the_users_alone(data, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    run = tmp_path / "run"
    make_spec(data, run, world_size=1, epochs=1, batch_size=4, base_batch=8)
    output = finish(train(run, warm_start=True, FRELON_WARM_DIR=str(shared)))
    assert "not a private folder" in output and "starting cold" in output
    assert not list(shared.iterdir())


def test_stop_ends_the_servers_of_a_folder(tmp_path, monkeypatch):
    folder = tmp_path / "w"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    folder.mkdir(mode=0o700)
    (folder / "x.pid").write_text(str(sleeper.pid))
    assert warm.stop(folder) == 1
    assert sleeper.wait(timeout=10) == -signal.SIGTERM and not list(folder.glob("*.pid"))
