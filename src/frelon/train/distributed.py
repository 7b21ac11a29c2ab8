"""Process-group set-up from torchrun's environment; exact sharding for evaluation.

A rank launched on a GPU first takes that GPU's lock (`launcher.hold_gpu`), before anything
touches CUDA, and keeps it until it exits. With FRELON_FAKE_GPUS set (tests only) the launcher
hands out pretended GPUs: the ranks take their locks as on real ones but train on the CPU with
gloo, whatever `device` says.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from frelon.train.launcher import fake_gpus, hold_gpu


@dataclass(frozen=True)
class World:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: str = "auto") -> World:
    """Join the process group torchrun prepared (or run alone); gloo on CPU, nccl on GPU."""
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
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return World(rank, world_size, local_rank, target)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


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
