"""Accuracy, balanced accuracy and the confusion matrix, computed over every sample exactly once."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from frelon.data.dataset import collate
from frelon.parallel.distributed import World, all_reduce_sum, shard, stoppable


@torch.no_grad()
def confusion_matrix(model: nn.Module, dataset: Dataset, num_classes: int, world: World,
                     batch_size: int = 64) -> torch.Tensor:
    """(true, predicted) counts summed over ranks; each rank scores its own disjoint shard (a stop asked for
    meanwhile raises `StopRequested` on every rank)."""
    was_training = model.training
    model.eval()
    counts = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=world.device)
    loader = DataLoader(Subset(dataset, shard(len(dataset), world)), batch_size=batch_size, collate_fn=collate)
    for x, y in stoppable(loader, len(dataset), batch_size, world):
        pred = model(x.to(world.device)).argmax(1)
        flat = y.to(world.device) * num_classes + pred
        counts += torch.bincount(flat, minlength=num_classes ** 2).view(num_classes, num_classes)
    model.train(was_training)
    return all_reduce_sum(counts).cpu()


def metrics(confusion: torch.Tensor, classes: list[str]) -> dict:
    """Scores from a confusion matrix; balanced accuracy is the mean recall over classes present."""
    confusion = confusion.double()
    support = confusion.sum(1)
    recall = confusion.diag() / support.clamp(min=1)
    present = support > 0
    return {
        "n": int(support.sum()),
        "accuracy": float(confusion.diag().sum() / support.sum().clamp(min=1)),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "recall": {c: float(r) for c, r in zip(classes, recall)},
        "confusion": confusion.long().tolist(),
        "classes": list(classes),
    }
