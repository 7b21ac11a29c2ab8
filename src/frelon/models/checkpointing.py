"""Gradient checkpointing as a policy: which units of a model keep their activations for backward.

A model that supports it lists its units (`checkpoint_units()`: named modules applied one after the
other, e.g. the residual blocks of a ResNet) and runs them through `run_units`. A policy picks the
segments recomputed during backward instead of stored:

- `none`: store everything;
- a list of unit names or prefixes, e.g. `[layer2, layer4]` (the course's example): each run of
  consecutive units that match the same entry is one segment, only its input is stored;
- `all`: every unit is its own segment (only block inputs are stored);
- `sqrt`: about sqrt(n) equal segments of the n units (Chen et al. 2016).

Recomputation uses non-reentrant `torch.utils.checkpoint` (works under DDP and autocast). During
recomputation runs batch norm exactly as the forward pass did (so the recomputed activations and
saved tensors match), then restores `running_mean`, `running_var` and `num_batches_tracked`, which
it would otherwise update a second time (pytorch#96136): a step with checkpointing leaves exactly the
statistics a step without it does.

Under `torch.compile` the same segments go to `torch.utils.checkpoint` without that restoring
context (Dynamo accepts no such `context_fn`), and need none: Dynamo traces each segment as one
region that AOTAutograd recomputes in the backward graph, and functionalization turns batch norm's
in-place statistics update into an output of the forward graph, written back to the buffers once
after it; the backward graph recomputes activations only. The tests compare compiled steps of every
policy with eager steps without checkpointing: gradients, running statistics, `num_batches_tracked`.
This holds for backends that go through AOTAutograd (inductor, the default, and `aot_eager`). A
graph break inside a unit makes Dynamo give up the whole `run_units` call (a graph break in a loop)
and run it eagerly, restoring context included (a test checks the statistics then too). Should
Dynamo instead run only that segment's checkpoint eagerly, nothing would keep its recomputation from
updating the statistics again: `_traced_sequence` stops it with an error rather than train on them.

Nothing here keeps state between calls: what a recomputed segment keeps for backward (its input) is
saved by `torch.utils.checkpoint` as an autograd saved tensor, so whoever wants to count it installs
`torch.autograd.graph.saved_tensors_hooks` around the forward pass (thread-local, and the innermost
hooks win: one measurement never sees another's tensors; see `frelon.studies.checkpointing`).
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from frelon.errors import FrelonError

Policy = Union[str, Sequence[str], None]
Plan = list[tuple[int, int, bool]]  # [start, end) of the units, recomputed or not


def plan(names: Sequence[str], policy: Policy) -> Plan:
    """Contiguous segments covering every unit, each marked recomputed (True) or stored (False)."""
    n = len(names)
    if policy is None or policy == "none":
        return [(0, n, False)]
    if policy == "all":
        return [(i, i + 1, True) for i in range(n)]
    if policy == "sqrt":
        k = max(1, math.ceil(math.sqrt(n)))
        bounds = [round(i * n / k) for i in range(k + 1)]
        return [(a, b, True) for a, b in zip(bounds, bounds[1:]) if b > a]
    if isinstance(policy, str):
        raise FrelonError(f"checkpointing: unknown policy {policy!r}; use none, all, sqrt or a list of "
                          f"blocks or stages such as [layer2, layer4]")
    owner: list[int | None] = [None] * n
    for k, entry in enumerate(policy):
        hits = [i for i, name in enumerate(names) if name == entry or name.startswith(f"{entry}.")]
        if not hits:
            raise FrelonError(f"checkpointing: {entry!r} names no block of this model; "
                              f"blocks are {', '.join(names)} (a stage name such as layer2 takes all its blocks)")
        for i in hits:
            owner[i] = k
    segments: Plan = []
    start = 0
    for i in range(1, n + 1):
        if i == n or owner[i] != owner[start]:
            segments.append((start, i, owner[start] is not None))
            start = i
    return segments


@contextlib.contextmanager
def _batch_norm_statistics_kept(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Recompute batch norm exactly as in the forward pass (same call, same saved tensors, which
    checkpointing matches one by one), then put back the running statistics it updated again."""
    kept = [(buffer, buffer.clone()) for unit in modules for m in unit.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
            for buffer in (m.running_mean, m.running_var, m.num_batches_tracked) if buffer is not None]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in kept:
                buffer.copy_(value)


def run_units(units: Sequence[nn.Module], segments: Plan | None, x: torch.Tensor) -> torch.Tensor:
    """Apply `units` in order; segments marked True are recomputed in backward instead of stored."""
    if not segments or not torch.is_grad_enabled():
        for unit in units:
            x = unit(x)
        return x
    compiling = torch.compiler.is_compiling()
    for start, end, recompute in segments:
        part = units[start:end]
        if recompute and compiling:  # recomputed in the compiled backward graph (see the module docstring)
            x = checkpoint(_traced_sequence, part, x, use_reentrant=False)
        elif recompute:  # its input `x` is kept as a saved tensor (see the module docstring)
            x = checkpoint(_sequence, part, x, use_reentrant=False,
                           context_fn=lambda part=part: (contextlib.nullcontext(),
                                                         _batch_norm_statistics_kept(part)))
        else:
            x = _sequence(part, x)
    return x


def _sequence(units: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for unit in units:
        x = unit(x)
    return x


def _traced_sequence(units: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """`_sequence` for a segment checkpointed under torch.compile, which only Dynamo may run: run
    eagerly, Dynamo left the segment's checkpoint to eager mode (a graph break inside it), and this
    is, or precedes, a recomputation in backward that would update batch-norm statistics again."""
    if not torch.compiler.is_compiling():
        blocks = ", ".join(type(unit).__name__ for unit in units)
        raise FrelonError(f"checkpointing under torch.compile: the checkpointed units ({blocks}) did not compile "
                          f"whole (a graph break inside them; TORCH_LOGS=graph_breaks names it), and their eager "
                          f"recomputation would update batch-norm statistics twice; remove the graph break, or "
                          f"set train.compile: false or train.checkpointing: none")
    return _sequence(units, x)


def apply(model: nn.Module, policy: Policy) -> nn.Module:
    """Set `policy` on `model` (a no-op for `none`); a model without units refuses any other policy."""
    if policy is None or policy == "none":
        if hasattr(model, "checkpoint_plan"):
            model.checkpoint_plan = None
        return model
    if not hasattr(model, "checkpoint_units"):
        raise FrelonError(f"checkpointing: {type(model).__name__} has no checkpointable units; set checkpointing: none")
    names = [name for name, _ in model.checkpoint_units()]
    model.checkpoint_plan = plan(names, policy)
    return model
