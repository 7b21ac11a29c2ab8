"""Two ranks that train, score, stop and resume under NCCL's host asynchrony (emulated on gloo, see
nccl_emulation): every wait between ranks is a real barrier, no rank reads a file another is still
writing, and a run resumes whatever GPUs it sees now."""

import fcntl
import json
import multiprocessing
import os
import shutil
import signal
import time

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import nccl_emulation
from engine_fixtures import make_spec, prepared_hornet
from frelon import tasks
from frelon.tasks.classification import ClassificationTask
from frelon.train import checkpoints
from frelon.launch import worker
from frelon.parallel.distributed import World
from test_distributed_eval import AGENT_STORE, rendezvous

TRAIN = dict(epochs=2, world_size=2, batch_size=4, log_every=1)
# the ranks start from a fork server that imported torch and the worker once, where "spawn" imports them anew
# in each rank (the ranks set their environment themselves: a fork server's children do not see the test's)
multiprocessing.set_forkserver_preload(["torch", "frelon.launch.worker", "nccl_emulation"])


class SmallTask(ClassificationTask):
    """Classification with a small batch-norm net; rank `signaller` asks itself to stop (SIGUSR1) at its
    micro-batch `stop=("batch", n)`, as validation `("val", epoch)` starts, or as the test split is scored
    `("test",)`; `nan_from` makes its loss non-finite from that micro-batch on."""

    def __init__(self, spec, rank, stop=None, nan_from=None, signaller=1):
        super().__init__(spec)
        self.rank, self.stop, self.nan_from, self.signaller = rank, stop, nan_from, signaller
        self.batches = self.validations = 0

    def build_model(self, pretrained, empty=False):
        torch.manual_seed(0)
        with torch.device("meta") if empty else torch.device("cpu"):
            return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(4, 2))

    def _signal(self, moment):
        if self.rank == self.signaller and self.stop == moment:
            os.kill(os.getpid(), signal.SIGUSR1)

    def loss(self, model, batch):
        self.batches += 1
        self._signal(("batch", self.batches))
        loss, stats = super().loss(model, batch)
        if self.nan_from and self.rank == 1 and self.batches >= self.nan_from:
            loss = loss * float("nan")
        return loss, stats

    def evaluate(self, model, split, world):
        self.validations += split == "val"
        self._signal(("val", self.validations) if split == "val" else ("test",))
        return super().evaluate(model, split, world)


def fake_cuda(rank: int, visible: int) -> list[torch.Generator]:
    """CUDA's random-state API over `visible` CPU generators (each seeded by rank and device): the rank
    trains on the CPU, but saves and restores "GPU" states as it would with that many GPUs visible."""
    generators = [torch.Generator().manual_seed(1000 + 10 * rank + i) for i in range(visible)]

    def generator(device):
        index = device if isinstance(device, int) else torch.device(device).index or 0
        if index >= visible:
            raise RuntimeError(f"CUDA error: invalid device ordinal {index}")
        return generators[index]

    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: visible
    torch.cuda.current_device = lambda: rank if visible > rank else 0
    torch.cuda.get_rng_state = lambda device="cuda": generator(device).get_state()
    torch.cuda.set_rng_state = lambda state, device="cuda": generator(device).set_state(state)
    torch.cuda.get_rng_state_all = lambda: [g.get_state() for g in generators]
    torch.cuda.set_rng_state_all = lambda states: [generator(i).set_state(s) for i, s in enumerate(states)]
    return generators


def _rank(rank, port, out, options):
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), FRELON_PREEMPTED_MARKER=f"{out}/preempted", **AGENT_STORE)
    torch.set_num_threads(1)
    pending = nccl_emulation.install()
    generators = fake_cuda(rank, options["visible"]) if options.get("visible") else []
    task = SmallTask(json.loads(open(f"{out}/spec.json").read()), rank, options.get("stop"), options.get("nan_from"))
    tasks.build = lambda spec: task
    if options.get("loads"):  # record which state each rank resumes from, then end the run there
        original = checkpoints.load

        def load(path, spec):
            state = original(path, spec)
            if str(path).endswith("last.pt"):
                torch.save(state and state["step"], f"{out}/loaded.{rank}")
                os._exit(0)
            return state

        checkpoints.load = load
    code = worker.main(["train", f"{out}/spec.json", "--out", f"{out}/metrics.json"])
    report = {"code": code, "returned_early": pending.returned_early, "batches": task.batches,
              "marker": os.path.exists(f"{out}/preempted")}
    state = f"{out}/state/last.pt"
    report["state_step"] = torch.load(state, weights_only=True)["step"] if os.path.exists(state) else None
    if generators:
        report["cuda_state"] = generators[torch.cuda.current_device()].get_state()
    torch.save(report, f"{out}/report.{rank}")


def run(out, **options):
    """Both ranks of the run in `out` (its spec.json); what each reported when its worker returned."""
    (out / "preempted").unlink(missing_ok=True)
    with rendezvous() as port:
        mp.start_processes(_rank, args=(port, str(out), options), nprocs=2, join=True, start_method="forkserver")
    return [torch.load(out / f"report.{rank}", weights_only=False) for rank in (0, 1)]


def weights(out):
    return torch.load(out / "model.pt", weights_only=True)["model"]


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def history_columns(out):
    """history.csv without its timing columns"""
    return [line.split(",")[:6] for line in (out / "history.csv").read_text().splitlines()]


TIMING = ("train_seconds", "images_per_second", "data_wait_fraction")  # a run's timing: not what it scores


def scores(out):
    metrics = json.loads((out / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if k not in TIMING}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepared_hornet(tmp_path_factory.mktemp("hornet"))


@pytest.fixture(scope="module")
def whole(data, tmp_path_factory):
    """An uninterrupted 2-rank run (under the emulation too)."""
    out = tmp_path_factory.mktemp("whole")
    make_spec(data, out, **TRAIN)
    return out, run(out)


@pytest.mark.slow  # two processes: seconds, most of it their start-up
def test_two_ranks_train_and_score_the_test_split_when_collectives_do_not_block(whole, monkeypatch):
    out, reports = whole
    assert [r["code"] for r in reports] == [0, 0]
    assert all(r["returned_early"] > 0 for r in reports)  # the emulation was on
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == len(SmallTask(json.loads((out / "spec.json").read_text()), 0).dataset("test"))
    assert not (out / "state").exists()  # gone once the metrics are written
    spec = json.loads((out / "spec.json").read_text())
    monkeypatch.setattr(tasks, "build", lambda spec: SmallTask(spec, 0))
    worker.evaluate(spec, str(out / "model.pt"), str(out / "from_file.json"), World(0, 1, 0, torch.device("cpu")))
    from_file = json.loads((out / "from_file.json").read_text())
    assert {k: v for k, v in from_file.items() if k not in TIMING} == scores(out)  # in memory = from model.pt


@pytest.mark.slow  # three 2-process runs: about 10 s
def test_a_stop_asked_of_one_rank_saves_before_any_rank_exits_and_resumes_on_fewer_visible_gpus(data, whole,
                                                                                                 tmp_path):
    make_spec(data, tmp_path, **TRAIN)
    stopped = run(tmp_path, stop=("batch", 3), visible=2)  # a workstation: each rank sees both GPUs
    assert [r["code"] for r in stopped] == [75, 75]
    # when its worker returned, each rank (rank 1 most of all) found rank 0's state and marker written
    assert [r["state_step"] for r in stopped] == [3, 3] and all(r["marker"] for r in stopped)
    resumed = run(tmp_path, visible=1)  # then SLURM, one GPU a node: rank 1's GPU is device 0 now
    assert [r["code"] for r in resumed] == [0, 0]
    for rank, report in enumerate(resumed):  # the state of the device the rank had, on the device it has
        expected = torch.Generator().manual_seed(1000 + 10 * rank + rank).get_state()
        assert torch.equal(report["cuda_state"], expected)
    assert_same(weights(tmp_path), weights(whole[0]))
    assert scores(tmp_path) == scores(whole[0])


@pytest.mark.slow  # two 2-process runs
def test_a_stop_while_the_ranks_validate_saves_the_trained_epoch_and_the_rerun_validates_it(data, whole, tmp_path):
    make_spec(data, tmp_path, **TRAIN)
    stopped = run(tmp_path, stop=("val", 1))
    assert [r["code"] for r in stopped] == [75, 75] and [r["state_step"] for r in stopped] == [4, 4]
    resumed = run(tmp_path)
    assert [r["code"] for r in resumed] == [0, 0] and resumed[0]["batches"] == 4  # the second epoch only
    assert_same(weights(tmp_path), weights(whole[0]))
    assert scores(tmp_path) == scores(whole[0])
    assert history_columns(tmp_path) == history_columns(whole[0])


@pytest.mark.slow  # two 2-process runs
def test_a_stop_while_the_test_split_is_scored_keeps_the_trained_model_and_the_rerun_only_scores(data, whole,
                                                                                                  tmp_path):
    make_spec(data, tmp_path, **TRAIN)
    stopped = run(tmp_path, stop=("test",))
    assert [r["code"] for r in stopped] == [75, 75] and not (tmp_path / "metrics.json").exists()
    for name in ("model.pt", "history.csv"):  # a failed job's outputs, deleted by Snakemake
        (tmp_path / name).unlink()
    rerun = run(tmp_path)
    assert [r["code"] for r in rerun] == [0, 0] and [r["batches"] for r in rerun] == [0, 0]
    assert_same(weights(tmp_path), weights(whole[0]))
    assert scores(tmp_path) == scores(whole[0])
    assert history_columns(tmp_path) == history_columns(whole[0])
    assert not (tmp_path / "state").exists()


@pytest.mark.slow  # 2-process runs
def test_a_loss_that_turns_nan_on_one_rank_ends_the_run_as_diverged_on_both(data, tmp_path):
    make_spec(data, tmp_path, **TRAIN, on_divergence="stop")
    reports = run(tmp_path, nan_from=3)
    assert [r["code"] for r in reports] == [0, 0]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["diverged"] == {"step": 3, "epoch": 1} and "accuracy" not in metrics


@pytest.mark.slow  # 2-process runs
def test_ranks_wait_for_rank_zeros_run_lock_before_reading_the_state(data, tmp_path):
    """A rerun started while a killed launch's ranks still save: rank 1 must not read the state before
    rank 0 holds the lock, i.e. before the old ranks wrote their last state."""
    make_spec(data, tmp_path, **TRAIN)
    stopped = run(tmp_path, stop=("batch", 3))
    assert [r["state_step"] for r in stopped] == [3, 3]
    saved = tmp_path / "state" / "last.pt"
    shutil.move(saved, tmp_path / "later.pt")  # the old ranks' last state, not written yet
    lock = os.open(tmp_path / ".train.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)  # the old ranks still hold the run
    with rendezvous() as port:
        context = mp.start_processes(_rank, args=(port, str(tmp_path), {"loads": True}), nprocs=2,
                                     join=False, start_method="forkserver")
        deadline = time.monotonic() + 8  # both ranks start; rank 0 waits for the lock; rank 1 must wait for rank 0
        while time.monotonic() < deadline and not (tmp_path / "loaded.1").exists():
            time.sleep(0.1)
        shutil.move(tmp_path / "later.pt", saved)
        os.close(lock)  # the old ranks exit
        while not context.join():
            pass
    assert [torch.load(tmp_path / f"loaded.{rank}") for rank in (0, 1)] == [3, 3]


def test_a_stop_asked_for_while_a_single_process_scores_ends_the_scoring():
    from frelon.parallel import preemption
    from frelon.parallel.distributed import stoppable

    alone = World(0, 1, 0, torch.device("cpu"))
    assert list(stoppable(range(3), 3, 1, alone)) == [0, 1, 2]
    with preemption.handling():
        os.kill(os.getpid(), signal.SIGUSR1)
        with pytest.raises(preemption.StopRequested):
            list(stoppable(range(3), 3, 1, alone))
    assert not preemption.requested()  # the handler is gone with the block


def test_the_ranks_wait_for_each_other_as_long_as_the_spec_says(tmp_path, monkeypatch):
    from frelon.errors import FrelonError
    from frelon.parallel import distributed

    asked = []

    def init(device, timeout_minutes):
        asked.append(timeout_minutes)
        raise FrelonError("stop here")

    monkeypatch.setattr(distributed, "init", init)
    monkeypatch.setattr(worker.parentage, "die_with_parent", lambda: None)  # this process is pytest, not a rank
    for train, expected in (({"collective_timeout_minutes": 120}, 120), ({}, distributed.DEFAULT_TIMEOUT_MINUTES)):
        (tmp_path / "spec.json").write_text(json.dumps({"device": "cpu", "train": train}))
        assert worker.main(["train", str(tmp_path / "spec.json")]) == 1 and asked[-1] == expected
    assert distributed.DEFAULT_TIMEOUT_MINUTES == 60
