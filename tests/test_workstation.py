"""`snakemake --cores all --resources gpu=4` on a GPU workstation, simulated on the CPU: pretended
GPUs (FRELON_FAKE_GPUS), the real launcher and torchrun, and stand-in ranks that take their GPU
locks exactly as the worker does (`gpu_locks.hold_gpu`), or the real worker."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import tool_env
from frelon.errors import FrelonError
from frelon.parallel import gpu_locks
from frelon.parallel.gpu_locks import gpu_slots

STAND_IN_RANK = '''
import json, os, signal, time
from pathlib import Path
from frelon.parallel.gpu_locks import hold_gpu

signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as a rank busy saving its state: it lives on for a while

local = int(os.environ["LOCAL_RANK"])
hold_gpu(local)
gpu = os.environ["CUDA_VISIBLE_DEVICES"].split(",")[local]
start = time.time()
ranks = Path(os.environ["RANKS_DIR"])
(ranks / f"{os.environ['JOB']}.{local}.pid").write_text(str(os.getpid()))
deadline = start + float(os.environ["HOLD_S"])
while time.time() < deadline and not (ranks / "release").exists():
    time.sleep(0.02)
with open(ranks / "ranks.jsonl", "a") as f:  # written while the lock is held
    f.write(json.dumps({"job": os.environ["JOB"], "gpu": gpu, "start": start, "end": time.time()}) + "\\n")
'''
LAUNCH = ("import sys; from frelon.launch import launcher; launcher.WORKER = 'stand_in_rank'; "
          "sys.exit(launcher.launch([], int(sys.argv[1]), 'auto', 2))")


@pytest.fixture
def machine(tmp_path):
    """A workstation with `gpus` pretended GPUs: starts launches of stand-in ranks."""
    (tmp_path / "stand_in_rank.py").write_text(STAND_IN_RANK)
    (tmp_path / "ranks").mkdir()
    started = []

    def start(job: str, world_size: int, gpus: int, hold_s: float) -> subprocess.Popen:
        env = {k: v for k, v in tool_env().items() if not k.startswith("SLURM_") and k != "CUDA_VISIBLE_DEVICES"}
        env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")])),
                   FRELON_FAKE_GPUS=str(gpus), FRELON_GPU_LOCK_DIR=str(tmp_path / "locks"),
                   FRELON_LAUNCH_RECORD=str(tmp_path / "launches.jsonl"), RANKS_DIR=str(tmp_path / "ranks"),
                   JOB=job, HOLD_S=str(hold_s), TMPDIR=str(tmp_path))  # what a killed launcher leaves, here
        with open(tmp_path / f"{job}.log", "w") as log:  # a file, not a pipe: read while the job runs
            proc = subprocess.Popen([sys.executable, "-c", LAUNCH, str(world_size)], env=env, start_new_session=True,
                                    stdout=log, stderr=subprocess.STDOUT, text=True)
        proc.log = tmp_path / f"{job}.log"
        started.append(proc)
        return proc

    yield start
    (tmp_path / "ranks" / "release").touch()
    for proc in started:  # whatever a failed test left: each launch's own process tree
        if proc.poll() is None:
            for process in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
                process.kill()
        proc.wait()


def wait_for(condition, timeout=60, what=""):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow  # a cold start or several processes: seconds
def test_concurrent_launches_never_share_a_gpu(machine, tmp_path):
    jobs = [machine(f"job{i}", 2, 4, 60) for i in range(3)]  # 3 x 2 GPUs on 4: one job must wait
    running = lambda: list((tmp_path / "ranks").glob("*.pid"))  # noqa: E731
    wait_for(lambda: len(running()) >= 4 or any(proc.poll() is not None for proc in jobs), what="two jobs' ranks")
    # the third launch has tried the locks and said it waits: an event, not a guess at how long it takes
    waiting = lambda: [p for p in jobs if "waiting for 2 free GPUs" in p.log.read_text()]  # noqa: E731
    wait_for(lambda: waiting() or any(proc.poll() is not None for proc in jobs), what="the third job to wait")
    assert len(running()) == 4 and all(proc.poll() is None for proc in jobs) and len(waiting()) == 1
    (tmp_path / "ranks" / "release").touch()
    for proc in jobs:
        assert proc.wait(timeout=60) == 0, proc.log.read_text()
    ranks = [json.loads(line) for line in (tmp_path / "ranks" / "ranks.jsonl").read_text().splitlines()]
    assert sorted(r["job"] for r in ranks) == ["job0", "job0", "job1", "job1", "job2", "job2"]
    for job in ("job0", "job1", "job2"):
        assert len({r["gpu"] for r in ranks if r["job"] == job}) == 2
    for a in ranks:
        for b in ranks:
            if a is not b and a["gpu"] == b["gpu"]:
                assert a["end"] <= b["start"] or b["end"] <= a["start"], (a, b)
    launches = [json.loads(line) for line in (tmp_path / "launches.jsonl").read_text().splitlines()]
    assert len(launches) == 3
    for record in launches:  # each job saw as many GPU ids as its world size
        assert record["world_size"] == 2 and len(record["cuda_visible_devices"].split(",")) == 2


def taken(lock_dir):
    """Whether another job would find no free GPU among 0 and 1."""
    try:
        with gpu_slots(1, ["0", "1"], lock_dir, timeout_s=0.2, poll_s=0.05):
            return False
    except FrelonError:
        return True


@pytest.mark.slow  # a cold start or several processes: seconds
def test_a_killed_launchers_gpus_come_back_only_after_its_ranks_are_gone(machine, tmp_path):
    locks, ranks = tmp_path / "locks", tmp_path / "ranks"
    proc = machine("job", 2, 2, 60)
    wait_for(lambda: all((ranks / f"job.{i}.pid").exists() for i in (0, 1)) or proc.poll() is not None,
             what="both ranks to hold their GPUs")
    assert proc.poll() is None, proc.log.read_text()
    rank_pids = [int((ranks / f"job.{i}.pid").read_text()) for i in (0, 1)]
    [torchrun] = psutil.Process(proc.pid).children()

    os.kill(proc.pid, signal.SIGKILL)  # the launcher: torchrun, stopping its ranks, still holds the claims
    proc.wait()
    assert gpu_locks._in_use(locks / "frelon-gpu0.lock") and gpu_locks._in_use(locks / "frelon-gpu1.lock")
    assert taken(locks)
    torchrun.send_signal(signal.SIGKILL)  # and torchrun: the ranks still hold their rank locks
    torchrun.wait(timeout=10)
    assert not gpu_locks._in_use(locks / "frelon-gpu0.lock") and gpu_locks._in_use(locks / "frelon-gpu0.rank.lock")
    assert taken(locks)

    (ranks / "release").touch()
    psutil.wait_procs([psutil.Process(pid) for pid in rank_pids if psutil.pid_exists(pid)], timeout=10)
    with gpu_slots(2, ["0", "1"], locks, timeout_s=0) as claim:
        assert claim.gpus == ["0", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from engine_fixtures import prepared_hornet

    return prepared_hornet(tmp_path_factory.mktemp("hornet"), presence=10, absence=14)


@pytest.mark.slow  # a real training or several Snakemake runs: seconds
def test_the_real_worker_holds_its_pretended_gpu_while_it_trains_on_the_cpu(data, tmp_path):
    from engine_fixtures import make_spec

    spec = make_spec(data, tmp_path / "run", epochs=1, world_size=1, batch_size=4, checkpoint_every=100)
    spec["device"] = "cuda"  # pretended GPUs stand for real ones even where a GPU is required
    (tmp_path / "run" / "spec.json").write_text(json.dumps(spec))
    env = {k: v for k, v in tool_env().items() if not k.startswith("SLURM_") and k != "CUDA_VISIBLE_DEVICES"}
    env.update(FRELON_FAKE_GPUS="4", FRELON_GPU_LOCK_DIR=str(tmp_path / "locks"),
               FRELON_LAUNCH_RECORD=str(tmp_path / "launches.jsonl"))
    proc = subprocess.Popen([sys.executable, "-m", "frelon.cli", "train", str(tmp_path / "run" / "spec.json"),
                             "--threads", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rank_lock = tmp_path / "locks" / "frelon-gpu0.rank.lock"
    held = False
    while proc.poll() is None and not held:
        held = rank_lock.exists() and gpu_locks._in_use(rank_lock)
        time.sleep(0.05)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, output
    assert held, "the rank never held its GPU's lock"
    assert (tmp_path / "run" / "model.pt").exists() and not gpu_locks._in_use(rank_lock)
    [record] = [json.loads(line) for line in (tmp_path / "launches.jsonl").read_text().splitlines()]
    assert (record["cuda_visible_devices"], record["gpus"], record["world_size"]) == ("0", ["0"], 1)
