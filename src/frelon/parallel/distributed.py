"""Process-group set-up from torchrun's environment; exact sharding for evaluation.

A rank launched on a GPU first takes that GPU's lock (`gpu_locks.hold_gpu`), before anything
touches CUDA, and keeps it until it exits. With FRELON_FAKE_GPUS set (tests only) the launcher
hands out pretended GPUs: the ranks take their locks as on real ones but train on the CPU with
gloo, whatever `device` says.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from frelon.parallel import preemption
from frelon.parallel.gpu_locks import fake_gpus, hold_gpu

# How long a rank waits in a collective for the others (NCCL's default is 10 minutes): rank 0 alone scores
# COCO (pycocotools) while the others wait, several minutes for val2017 on a slow host.
DEFAULT_TIMEOUT_MINUTES = 60


@dataclass(frozen=True)
class World:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: str = "auto", timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> World:
    """Join the process group torchrun prepared (or run alone); gloo on CPU, nccl on GPU; a collective
    that waits longer than `timeout_minutes` for the other ranks fails."""
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    hold_gpu(local_rank)  # first: before anything asks CUDA; nothing unless the launcher claimed GPUs
    pretended = fake_gpus() is not None
    use_cuda = device != "cpu" and not pretended and torch.cuda.is_available()
    if device == "cuda" and not use_cuda and not pretended:
        raise RuntimeError("device: cuda was asked for but no GPU is visible; set device: cpu or auto")
    target = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(target)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=timeout_minutes))
    return World(rank, world_size, local_rank, target)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    """Every rank waits here until all have arrived, on every backend. A collective on a CUDA tensor is
    none: with NCCL it returns to the host as soon as it is enqueued (only its result, once read, waits)."""
    if dist.is_initialized():
        dist.barrier(device_ids=[world.device.index] if world.device.type == "cuda" else None)


def stop_agreed(world: World) -> bool:
    """Whether any rank was asked to stop (SIGTERM, SIGUSR1, Ctrl-C); every rank must call it at the same
    point, and the answer, read on the host, is the same on all."""
    flag = torch.tensor(float(preemption.requested()), device=world.device)
    return bool(all_reduce_max(flag).item() > 0)


def stoppable(batches, n: int, batch_size: int, world: World, common: int | None = None):
    """The evaluation batches of this rank's shard of `n` samples (see `shard`), with a stop check
    (`stop_agreed`) before each batch that every rank has (shards differ by one sample at most; `common`:
    how many every rank has, where batches are not cut evenly): a stop asked for while the ranks score
    raises `preemption.StopRequested` on all of them together."""
    if common is None:
        common = -(-(n // world.world_size) // batch_size)  # batches of the smallest shard
    for i, batch in enumerate(batches):
        if world.world_size == 1:
            asked = preemption.requested()
        else:
            asked = i < common and stop_agreed(world)
        if asked:
            raise preemption.StopRequested("asked to stop while scoring")
        yield batch


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place (a no-op when running alone)."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shard(n: int, world: World) -> list[int]:
    """This rank's indices of 0..n-1: disjoint across ranks, covering each index exactly once."""
    return list(range(world.rank, n, world.world_size))


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over ranks, in place: a flag raised on any rank is raised on all."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_gather_objects(obj: object) -> list:
    """Every rank's `obj`, in rank order (a one-element list when running alone)."""
    if not dist.is_initialized():
        return [obj]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
