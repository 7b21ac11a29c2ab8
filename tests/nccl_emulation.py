"""NCCL's host asynchrony, emulated on gloo, so that CPU tests see what only a multi-GPU run would.

With NCCL a collective on a CUDA tensor returns to the host as soon as it is enqueued; the host waits
only when it reads the result (`.item()`, `.tolist()`, `bool(...)`), and device work that uses the tensor
runs after the collective on the stream. gloo's collectives block until every rank has joined, so a
collective used as a barrier works on the CPU and not on GPUs. Here, in a rank process:

- `all_reduce`, `broadcast`, `all_gather`, `all_gather_into_tensor` and `reduce_scatter_tensor` are started
  with `async_op=True` and return at once; a tensor they write becomes *pending*;
- any torch function or tensor method that touches a pending tensor (a TorchFunctionMode sees every one)
  first waits for its collective, as the stream would, and so does the host when it reads it;
- `barrier` is left as it is (NCCL's `barrier(device_ids=...)` blocks the host);
- rank 0's atomic writes (model.pt, state, metrics) land `delay` seconds late, so that a rank that reads
  a file without a real barrier finds it missing (0.3 s: such a rank reads within milliseconds; with the
  barrier of a stop removed, the stop test fails every time).
"""

from __future__ import annotations

import contextlib
import time
import weakref

import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

import frelon.atomic

# collective -> which of its arguments it writes (the first: a tensor, or a list of tensors)
COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor")


class _Pending(TorchFunctionMode):
    """Waits for a tensor's collective before anything uses it."""

    def __init__(self) -> None:
        super().__init__()
        self.works: dict[int, tuple[weakref.ref, object]] = {}
        self.returned_early = 0  # collectives whose result was never waited for by the caller

    def add(self, tensors: list[torch.Tensor], work) -> None:
        for tensor in tensors:
            self.works[id(tensor)] = (weakref.ref(tensor), work)

    def wait_for(self, values) -> None:
        for value in tree_flatten(values)[0]:
            if isinstance(value, torch.Tensor) and id(value) in self.works:
                ref, work = self.works.pop(id(value))
                if ref() is value:
                    work.wait()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.wait_for((args, kwargs))
        return func(*args, **kwargs)


def _written(name: str, args, kwargs) -> list[torch.Tensor]:
    first = args[0] if args else kwargs.get("tensor", kwargs.get("tensor_list", kwargs.get("output")))
    return list(first) if isinstance(first, (list, tuple)) else [first]


def _asynchronous(name: str, original, pending: _Pending):
    def collective(*args, async_op: bool = False, **kwargs):
        if async_op:
            return original(*args, async_op=True, **kwargs)
        work = original(*args, async_op=True, **kwargs)
        if work is not None:  # None: this rank is not in the group
            pending.add(_written(name, args, kwargs), work)
            pending.returned_early += 1
        return None

    return collective


def _late_on_rank_zero(delay: float):
    original = frelon.atomic.atomic_path

    @contextlib.contextmanager
    def atomic_path(target):
        with original(target) as tmp:
            yield tmp
            if dist.is_initialized() and dist.get_rank() == 0:
                time.sleep(delay)  # the new file appears this much later

    return atomic_path


def install(delay: float = 0.3) -> _Pending:
    """Emulate NCCL in this process (a rank), for the rest of its life."""
    pending = _Pending()
    for name in COLLECTIVES:
        patched = _asynchronous(name, getattr(c10d, name), pending)
        setattr(c10d, name, patched)  # what all_gather_object and friends call
        setattr(dist, name, patched)  # what frelon calls
    frelon.atomic.atomic_path = _late_on_rank_zero(delay)
    pending.__enter__()
    return pending
