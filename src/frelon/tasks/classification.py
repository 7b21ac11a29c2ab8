"""Image classification: a ResNet, cross-entropy, accuracy and balanced accuracy."""

from __future__ import annotations

import contextlib

from pathlib import Path

import torch
from torch import nn

from frelon.data.dataset import CachedSplit, collate
from frelon.evaluate.classification import confusion_matrix, metrics
from frelon.models.resnet import from_spec
from frelon.models.weights import load_pretrained
from frelon.parallel.distributed import World


class ClassificationTask:
    collate = staticmethod(collate)  # CachedSplit builds its batches whole

    def __init__(self, spec: dict):
        self.spec = spec
        self.num_classes = spec["model"]["num_classes"]
        self.loss_fn = nn.CrossEntropyLoss()

    def build_model(self, pretrained: bool, empty: bool = False) -> nn.Module:
        m = self.spec["model"]
        with torch.device("meta") if empty else contextlib.nullcontext():
            model = from_spec(m, self.num_classes)
        if pretrained and m["weights_path"]:
            load_pretrained(model, m["weights_path"])
        if m["head_only"]:
            model.freeze_backbone()
        return model

    def dataset(self, split: str, train: bool = False) -> CachedSplit:
        """`train` augments as data.augment says (absent: ["mirror"], what specs meant before the
        key existed), in uint8 batches that the engine finishes on a GPU (`RawBatch`; `raw` None: the
        engine decides); evaluation splits are never augmented."""
        data = self.spec["data"]
        return CachedSplit(Path(data["dir"]) / f"{split}.pt", data["preprocessing"],
                           data.get("augment", ["mirror"]) if train else (), data.get("augment_options"),
                           seed=self.spec["seed"], raw=None if train else False)

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch
        logits = model(x)
        return self.loss_fn(logits, y), {"samples": torch.tensor(len(y)), "accuracy": (logits.argmax(1) == y).sum()}

    def classes(self) -> list[dict]:
        return [{"id": i, "name": name} for i, name in enumerate(self.spec["data"]["classes"])]

    def write_outputs(self, result: dict, run_dir: Path) -> None:
        """Everything a classifier reports is in its metrics."""

    def evaluate(self, model: nn.Module, split: str, world: World) -> dict:
        dataset = self.dataset(split)
        return metrics(confusion_matrix(model, dataset, self.num_classes, world), dataset.classes)
