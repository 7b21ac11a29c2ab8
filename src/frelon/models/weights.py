"""Weights files in torchvision's format: a plain `state_dict`, published with its SHA-256."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from frelon.atomic import torch_save
from frelon.data.sources import write_checksum
from frelon.errors import FrelonError
from frelon.models.resnet import ResNet


def load_pretrained(model: ResNet, weights_path: str | os.PathLike) -> ResNet:
    """Load a torchvision-format ResNet `state_dict` into the backbone; the task's head stays new."""
    if model.norm != "batch" or not model.residual:
        raise FrelonError(
            f"weights {weights_path} come from a residual network with batch norm; they do not fit "
            f"model.norm={model.norm}, model.residual={str(model.residual).lower()}. Train these variants "
            f"from scratch (model.weights: null) or use norm: batch, residual: true"
        )
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = model.state_dict()
    if "conv1.weight" in backbone and backbone["conv1.weight"].shape != own["conv1.weight"].shape:
        raise FrelonError(
            f"weights {weights_path} are of a {backbone['conv1.weight'].shape[0]}-channel-wide network, this "
            f"model.width is {model.width}: set model.width to {backbone['conv1.weight'].shape[0]}, or train from "
            f"scratch (model.weights: null)"
        )
    missing, unexpected = model.load_state_dict(backbone, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise FrelonError(
            f"weights {weights_path} do not fit this {model.arch}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}; use torchvision-format weights of the same arch"
        )
    return model


def export(checkpoint: str | os.PathLike, out: str | os.PathLike) -> str:
    """Write a training checkpoint's model as a torchvision weights file plus `<out>.sha256`."""
    out = Path(out)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    torch_save(state, out)
    digest = write_checksum(out)
    return digest
