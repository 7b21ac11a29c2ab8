"""From CenterNet's output maps to boxes: the peaks of the class heatmaps, with their size and sub-cell offset."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from frelon.tasks.detection.targets import values_at


def heatmap_probabilities(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The no-flip path to `decode`, which takes probabilities so that both test paths meet there."""
    return {**outputs, "heatmap": torch.sigmoid(outputs["heatmap"].float())}


def merge_flip(plain: dict[str, torch.Tensor], flipped: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Flip test: average the class and size evidence of an image and of its mirror, mirrored back; the offset,
    which mirroring does not map cell to cell, comes from the plain pass alone (as the official code)."""
    plain, flipped = heatmap_probabilities(plain), heatmap_probabilities(flipped)
    return {"heatmap": (plain["heatmap"] + flipped["heatmap"].flip(3)) / 2,
            "size": (plain["size"].float() + flipped["size"].float().flip(3)) / 2,
            "offset": plain["offset"].float()}


def decode(heatmap: torch.Tensor, size: torch.Tensor, offset: torch.Tensor,
           k: int = 100) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-k boxes (B, K, 4) XYXY in output-grid units, their scores and labels: an object is a 3x3 local
    maximum of its class heatmap, so the max-pool stands in for box NMS."""
    heatmap, size, offset = heatmap.float(), size.float(), offset.float()
    _, classes, height, width = heatmap.shape
    peaks = heatmap * (F.max_pool2d(heatmap, 3, stride=1, padding=1) == heatmap)
    scores, flat = peaks.flatten(1).topk(min(k, classes * height * width))
    labels, cell = flat // (height * width), flat % (height * width)
    centre = torch.stack([cell % width, cell // width], dim=2).float() + values_at(offset, cell)
    half = values_at(size, cell) / 2
    return torch.cat([centre - half, centre + half], dim=2), scores, labels
