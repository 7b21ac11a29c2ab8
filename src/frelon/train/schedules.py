"""Learning-rate policy as pure functions of the iteration, so a test can tabulate them."""

from __future__ import annotations

import functools
import math

import torch


def scaled_lr(base_lr: float, global_batch: int, base_batch: int) -> float:
    """Linear scaling rule (Goyal et al. 2017): the learning rate grows with the global batch."""
    return base_lr * global_batch / base_batch


def warmup_cosine(step: int, total_steps: int, warmup_steps: int,
                  start_factor: float, final_factor: float) -> float:
    """Factor on the peak lr: linear from `start_factor` to 1 over the warmup, then cosine to `final_factor`."""
    if step < warmup_steps:
        return start_factor + (1.0 - start_factor) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                    start_factor: float, final_factor: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration scheduler following `warmup_cosine`."""
    factor = functools.partial(warmup_cosine, total_steps=total_steps, warmup_steps=warmup_steps,
                               start_factor=start_factor, final_factor=final_factor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
