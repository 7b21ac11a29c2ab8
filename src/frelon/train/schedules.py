"""Learning-rate policy as data: linear scaling, warmup, then a decay, as a pure function of the step.

A policy is a dict from the config (`train.lr_schedule`); `lr_factor` maps an optimizer step to
the factor on the peak learning rate, so a test can tabulate it and the history records it.
`build_scheduler` runs it per iteration through `torch.optim.lr_scheduler.LambdaLR`.
"""

from __future__ import annotations

import bisect
import functools
import math
from typing import TYPE_CHECKING

from frelon.errors import FrelonError

if TYPE_CHECKING:  # torch only where a scheduler is built: the Snakefile imports scaled_lr
    import torch

DECAYS = ("cosine", "step", "multistep", "poly", "constant")


def scaled_lr(base_lr: float, global_batch: int, base_batch: int) -> float:
    """Linear scaling rule (Goyal et al. 2017): the learning rate grows with the global batch."""
    return base_lr * global_batch / base_batch


def warmup_start_factor(lr_scaling: str, global_batch: int, base_batch: int) -> float:
    """Where warmup starts when the config does not say. Under linear scaling, from the unscaled lr
    (Goyal et al. 2017: base_lr, i.e. base_batch / global_batch of the peak), at most the peak itself
    (a batch below base_batch scales the lr down: nothing to warm up from); otherwise from zero."""
    return min(1.0, base_batch / global_batch) if lr_scaling == "linear" else 0.0


def warmup_steps(policy: dict, steps_per_epoch: int) -> int:
    if policy.get("warmup_iterations") is not None:
        return int(policy["warmup_iterations"])
    return round(policy.get("warmup_epochs", 0) * steps_per_epoch)


def lr_factor(step: int, policy: dict, steps_per_epoch: int, total_steps: int) -> float:
    """Factor on the peak lr at optimizer step `step` (0-based) under `policy`."""
    warmup = warmup_steps(policy, steps_per_epoch)
    if step < warmup:
        start = policy.get("warmup_start_factor", 0.0)
        return start + (1.0 - start) * step / warmup
    decay = policy.get("decay", "cosine")
    final = policy.get("final_factor", 0.0)
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if decay == "cosine":
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if decay == "poly":
        return final + (1.0 - final) * (1.0 - progress) ** policy.get("power", 1.0)
    if decay == "step":
        return policy.get("gamma", 0.1) ** (step // round(policy["step_epochs"] * steps_per_epoch))
    if decay == "multistep":
        milestones = [round(m * steps_per_epoch) for m in policy["milestones"]]
        return policy.get("gamma", 0.1) ** bisect.bisect_right(milestones, step)
    if decay == "constant":
        return 1.0
    raise FrelonError(f"train.lr_schedule.decay {decay!r} is unknown: choose one of {', '.join(DECAYS)}")


def build_scheduler(optimizer: torch.optim.Optimizer, policy: dict, steps_per_epoch: int,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration scheduler following `lr_factor`."""
    from torch.optim.lr_scheduler import LambdaLR

    factor = functools.partial(lr_factor, policy=policy, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    return LambdaLR(optimizer, factor)
