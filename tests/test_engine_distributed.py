"""The engine across processes: exact DDP gradients, one model validated on every rank, and resumption
after SIGKILL or SIGTERM."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from conftest import tool_env
from engine_fixtures import make_spec, prepared_hornet
from frelon.tasks.classification import ClassificationTask
from frelon.parallel import distributed
from frelon.train import engine
from test_distributed_eval import AGENT_STORE, join, rendezvous

BATCH = 8


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 3, 8, 8, generator=g), torch.randint(0, 3, (BATCH,), generator=g)


def _ddp_rank(rank, port, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), **AGENT_STORE)
    world = distributed.init("cpu")
    try:
        model = tiny_net()
        net = engine._wrap(model, {}, world)
        x, y = batch()
        half = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
        nn.functional.cross_entropy(net(x[half]), y[half]).backward()
        torch.save([p.grad for p in model.parameters()], f"{out}.{rank}")
    finally:
        distributed.shutdown()


@pytest.mark.slow  # two processes: most of it is their start-up
def test_a_two_rank_ddp_step_has_the_gradients_of_one_process_on_the_whole_batch(tmp_path):
    with rendezvous() as port:
        mp.spawn(_ddp_rank, args=(port, str(tmp_path / "grads")), nprocs=2, join=True)
    model = tiny_net()
    x, y = batch()
    nn.functional.cross_entropy(model(x), y).backward()
    for rank in (0, 1):
        for ours, reference in zip(torch.load(tmp_path / f"grads.{rank}"), (p.grad for p in model.parameters())):
            torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepared_hornet(tmp_path_factory.mktemp("hornet"))


class BatchNormTask(ClassificationTask):
    """Classification with a small batch-norm net, saving the buffers each rank validates with."""

    def build_model(self, pretrained):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(4, 2))

    def evaluate(self, model, split, world):
        torch.save(dict(model.named_buffers()), f"{self.spec['output']}/buffers.{world.rank}")
        return super().evaluate(model, split, world)


def _fit_rank(rank, port, spec):
    world = join(rank, 2, port, threads=1)
    try:
        engine.fit(BatchNormTask(spec), spec, world)
    finally:
        distributed.shutdown()


@pytest.mark.slow  # two processes: most of it is their start-up
def test_every_rank_validates_with_rank_zeros_batch_norm_statistics(data, tmp_path):
    """DDP syncs buffers only at the start of a training forward: after the epoch's last step each rank
    holds the statistics of its own last batch, unless they are broadcast before validation."""
    spec = make_spec(data, tmp_path, epochs=1, world_size=2, batch_size=4)
    with rendezvous() as port:
        mp.spawn(_fit_rank, args=(port, spec), nprocs=2, join=True)
    saved = torch.load(tmp_path / "model.pt", weights_only=True)["model"]  # rank 0's
    for rank in (0, 1):
        buffers = torch.load(tmp_path / f"buffers.{rank}", weights_only=True)
        assert buffers["1.num_batches_tracked"] > 0
        assert_same_model(buffers, {name: saved[name] for name in buffers})


TRAIN = dict(epochs=3, world_size=2, batch_size=4, checkpoint_every=2, log_every=1)


def train(spec_dir, **kwargs):
    """A cold start (FRELON_WARM=0): the launcher's process tree is the run's, all of it killed at power loss
    (tests/test_warm.py kills a warm run's launcher)."""
    return subprocess.Popen([sys.executable, "-m", "frelon.cli", "train", str(spec_dir / "spec.json"),
                             "--threads", "2"], env={**tool_env(), "FRELON_WARM": "0"}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def wait_for_state(run_dir, min_step, proc, timeout=120):
    """Block until the run has saved a resumable state at or past `min_step`."""
    deadline = time.monotonic() + timeout
    path = run_dir / "state" / "last.pt"
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        if path.exists():
            try:
                if torch.load(path, weights_only=True)["step"] >= min_step:
                    return
            except Exception:  # being replaced right now
                pass
        time.sleep(0.2)
    raise AssertionError("no state was saved in time")


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    make_spec(data, out, **TRAIN)
    proc = train(out)
    assert proc.wait(timeout=300) == 0, proc.stdout.read()
    return torch.load(out / "model.pt", weights_only=True)["model"], (out / "history.csv").read_text()


def assert_same_model(a, b):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.mark.slow  # three real trainings in subprocesses: about 45 s
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_one(how, data, tmp_path, uninterrupted):
    make_spec(data, tmp_path, **TRAIN)
    proc = train(tmp_path)
    wait_for_state(tmp_path, 4, proc)
    if how == "SIGKILL":
        tree = psutil.Process(proc.pid)
        for process in [tree, *tree.children(recursive=True)]:  # launcher, torchrun, both ranks: power loss
            process.kill()
        proc.wait()
    else:
        proc.send_signal(signal.SIGTERM)  # as SLURM does: the launcher passes it on
        output = proc.communicate(timeout=120)[0]
        assert proc.returncode == 75 and "state saved" in output, output  # 2 ranks: torchrun said 1
    assert not (tmp_path / "model.pt").exists()

    resumed = train(tmp_path)
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    assert "resumed from" in output
    model, history = uninterrupted
    assert_same_model(torch.load(tmp_path / "model.pt", weights_only=True)["model"], model)
    drop_timing = lambda text: [line.split(",")[:6] for line in text.splitlines()]
    assert drop_timing((tmp_path / "history.csv").read_text()) == drop_timing(history)


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path):
    """The second save stops half-way through its bytes and says so; the kill comes then, whatever the disk's
    speed (no race between a poll and a write that may finish first)."""
    target = tmp_path / "last.pt"
    script = (
        "import sys, time, torch\n"
        "from frelon.train import checkpoints\n"
        f"checkpoints.save({str(target)!r}, {{'step': 1, 'w': torch.ones(3)}})\n"
        "print('saved', flush=True)\n"
        "save = torch.save\n"
        "class Stalls:\n"
        "    def __init__(self, f): self.f, self.written = f, 0\n"
        "    def write(self, data):\n"
        "        self.written += self.f.write(data)\n"
        "        if self.written > 1_000_000:\n"
        "            self.f.flush(); print('writing', flush=True); time.sleep(600)\n"
        "        return len(data)\n"
        "    def __getattr__(self, name): return getattr(self.f, name)\n"
        "torch.save = lambda obj, f: save(obj, Stalls(f))\n"
        f"checkpoints.save({str(target)!r}, {{'step': 2, 'w': torch.zeros(1_000_000)}})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "saved"
    assert proc.stdout.readline().strip() == "writing"
    [partial] = tmp_path.glob(".last.pt.*.tmp")
    assert partial.stat().st_size > 1_000_000
    proc.kill()
    proc.wait()
    state = torch.load(target, weights_only=True)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))
