import contextlib
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import TensorDataset

from frelon.evaluate.classification import confusion_matrix, metrics
from frelon.parallel import distributed

N, CLASSES = 13, 3  # odd on purpose: a padding sampler would count two images twice


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, CLASSES, (N,), generator=g)
    logits = torch.randn(N, CLASSES, generator=g)  # the "model" below returns these unchanged
    return TensorDataset(logits, labels)


def _rank(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **AGENT_STORE)
    world = distributed.init("cpu")
    try:
        counts = confusion_matrix(nn.Identity(), dataset(), CLASSES, world, batch_size=4)
        torch.save(counts, f"{out}.{rank}")
    finally:
        distributed.shutdown()


def join(rank: int, world_size: int, port: int, threads: int | None = None) -> distributed.World:
    """This process as rank `rank` of a CPU (gloo) process group on 127.0.0.1:`port`."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **AGENT_STORE)
    if threads:
        torch.set_num_threads(threads)
    return distributed.init("cpu")


# The ranks join a store this test process serves, as torchrun's agent serves its workers' (rank 0 does not
# bind one): its port is chosen by the OS as the store binds it and stays bound while the ranks run, where a
# port found free and closed before the ranks bind it may be taken meanwhile by a test running beside.
AGENT_STORE = {"TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RESTART_COUNT": "0"}


@contextlib.contextmanager
def rendezvous(world_size: int = 2):
    """The port of a process group's store, served here until the block ends."""
    store = dist.TCPStore("127.0.0.1", 0, world_size, is_master=True, wait_for_workers=False)
    try:
        yield store.port
    finally:
        del store


def test_two_gloo_ranks_count_every_test_image_exactly_once(tmp_path):
    out = str(tmp_path / "counts")
    with rendezvous() as port:
        mp.spawn(_rank, args=(2, port, out), nprocs=2, join=True)
    rank0, rank1 = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    logits, labels = dataset().tensors
    expected = torch.zeros(CLASSES, CLASSES, dtype=torch.int64)
    for y, p in zip(labels, logits.argmax(1)):
        expected[y, p] += 1
    assert torch.equal(rank0, expected) and torch.equal(rank1, expected)
    assert int(rank0.sum()) == N


def test_shards_are_disjoint_and_cover_everything():
    worlds = [distributed.World(r, 3, r, torch.device("cpu")) for r in range(3)]
    shards = [distributed.shard(10, w) for w in worlds]
    assert sorted(i for s in shards for i in s) == list(range(10))


def test_balanced_accuracy_is_the_mean_recall():
    result = metrics(torch.tensor([[8, 2], [1, 1]]), ["absence", "presence"])
    assert result["n"] == 12
    assert result["accuracy"] == 9 / 12
    assert result["balanced_accuracy"] == (0.8 + 0.5) / 2


def test_ranks_wait_for_each_other_as_long_as_the_config_says(monkeypatch):
    """NCCL's default is 10 minutes, less than rank 0 alone may take to score COCO while the others wait."""
    from datetime import timedelta

    import torch.distributed as dist

    seen = {}
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kwargs: seen.update(backend=backend, **kwargs))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    world = distributed.init("cpu", timeout_minutes=90)
    assert seen == {"backend": "gloo", "timeout": timedelta(minutes=90)} and world.rank == 1
    distributed.init("cpu")
    assert seen["timeout"] == timedelta(minutes=distributed.DEFAULT_TIMEOUT_MINUTES) >= timedelta(minutes=60)


def test_a_barrier_names_the_ranks_gpu_to_nccl_and_nothing_to_gloo(monkeypatch):
    import torch.distributed as dist

    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "barrier", lambda **kwargs: calls.append(kwargs))
    distributed.barrier(distributed.World(1, 2, 1, torch.device("cuda", 1)))
    distributed.barrier(distributed.World(1, 2, 1, torch.device("cpu")))
    assert calls == [{"device_ids": [1]}, {"device_ids": None}]


def test_a_class_absent_from_the_split_is_left_out_of_the_balanced_accuracy_but_keeps_its_recall():
    # 3 classes; "c" never occurs, "b" once (and is missed); rows are the true class
    confusion = torch.tensor([[3, 1, 0], [1, 0, 0], [0, 0, 0]])
    result = metrics(confusion, ["a", "b", "c"])
    assert result == {"n": 5, "accuracy": 3 / 5, "balanced_accuracy": (0.75 + 0.0) / 2,
                      "recall": {"a": 0.75, "b": 0.0, "c": 0.0}, "confusion": confusion.tolist(),
                      "classes": ["a", "b", "c"]}


def test_one_sample_found_is_recall_and_accuracy_one_and_no_sample_at_all_scores_zero():
    one = metrics(torch.tensor([[0, 0], [0, 1]]), ["a", "b"])
    assert (one["n"], one["accuracy"], one["balanced_accuracy"], one["recall"]) == (1, 1.0, 1.0, {"a": 0.0, "b": 1.0})
    empty = metrics(torch.zeros(2, 2, dtype=torch.int64), ["a", "b"])
    assert (empty["n"], empty["accuracy"], empty["balanced_accuracy"]) == (0, 0.0, 0.0)
