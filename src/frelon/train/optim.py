"""Optimizers from the config: SGD (momentum, Nesterov), Adam or AdamW, no weight decay on norms and biases."""

from __future__ import annotations

import torch
from torch import nn

from frelon.errors import FrelonError


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay the weights of convolutions and linear layers; leave norm parameters and biases alone."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg["weight_decay"])
    name = cfg.get("optimizer", "sgd")
    # fused: one kernel over all parameters per step, the same update (SGD's bit for bit, tested), faster on
    # a CPU core (ResNet-18: Adam 24 against 59 ms, SGD with momentum 8.6 against 12.4 ms, measured)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for g in groups for p in g["params"])
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"], nesterov=cfg.get("nesterov", False),
                               fused=fused)
    if name in ("adam", "adamw"):  # adam: L2 on the decayed group (CenterNet trains with weight_decay 0)
        adam = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return adam(groups, lr=cfg["lr"], betas=tuple(cfg.get("betas", (0.9, 0.999))), fused=fused)
    raise FrelonError(f"train.optimizer {name!r} is unknown: choose sgd, adam or adamw")
