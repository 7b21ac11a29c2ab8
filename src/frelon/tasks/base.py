"""The contract between a task and the training engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset

from frelon.parallel.distributed import World


class Task(Protocol):
    """Model, data, loss and evaluation of one kind of problem; the engine owns everything else."""

    collate: Callable[[list], Any] | None

    def build_model(self, pretrained: bool, empty: bool = False) -> nn.Module:
        """The network; with `pretrained`, initialised from the spec's weights; `empty`: on `meta`,
        uninitialised, for a checkpoint's weights (load_state_dict(assign=True))."""

    def dataset(self, split: str, train: bool) -> Dataset:
        """A split of the prepared data (`train` switches augmentation on)."""

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The mean loss of a batch, and per-sample sums to average over an epoch (with `samples`)."""

    def evaluate(self, model: nn.Module, split: str, world: World) -> dict:
        """Metrics of the split, every sample counted once across ranks."""

    def classes(self) -> list[dict]:
        """`{id, name}` of each output class, in output order: saved with the trained model."""

    def write_outputs(self, result: dict, run_dir: Path) -> None:
        """Files beside a run's metrics (and the entries of `result` that are not metrics, taken out)."""
