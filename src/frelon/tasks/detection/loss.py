"""CenterNet's training loss: a focal loss on the class heatmaps, L1 on size and offset at object centres."""

from __future__ import annotations

import torch

from frelon.tasks.detection.targets import values_at


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """The paper's penalty-reduced focal loss: cells near a centre (under its Gaussian) cost less as negatives;
    summed and divided by the number of objects (by 1 when there are none, as the official code)."""
    pred = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    target = target.float()
    positive = target.eq(1)
    positives = torch.where(positive, (1 - pred) ** alpha * torch.log(pred), 0.0)
    negatives = torch.where(positive, 0.0, (1 - target) ** beta * pred**alpha * torch.log(1 - pred))
    return -(positives.sum() + negatives.sum()) / positive.sum().clamp(min=1)


def l1_at_centres(pred: torch.Tensor, index: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 only at object centres, where size and offset have ground truth; per coordinate, as the official RegL1Loss."""
    gathered = values_at(pred.float(), index)
    weight = mask.float().unsqueeze(2).expand_as(gathered)
    return ((gathered - target.float()).abs() * weight).sum() / (weight.sum() + 1e-4)


def centernet_loss(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], size_weight: float = 0.1,
                   offset_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The paper's weighted sum in float32 whatever the autocast dtype; the terms come back detached, for logs."""
    terms = {
        "heatmap_loss": focal_loss(outputs["heatmap"], targets["heatmap"]),
        "size_loss": l1_at_centres(outputs["size"], targets["index"], targets["mask"], targets["size"]),
        "offset_loss": l1_at_centres(outputs["offset"], targets["index"], targets["mask"], targets["offset"]),
    }
    total = terms["heatmap_loss"] + size_weight * terms["size_loss"] + offset_weight * terms["offset_loss"]
    return total, {name: term.detach() for name, term in terms.items()}
