"""A picture per run: validation images with the true boxes (green) and the predicted ones (red)."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert
from torchvision.transforms.v2.functional import to_pil_image
from torchvision.utils import draw_bounding_boxes, make_grid

from frelon.atomic import atomic_path

GREEN, RED = (0, 255, 0), (255, 0, 0)


def _xyxy(items: list[dict]) -> torch.Tensor:
    return box_convert(torch.tensor([i["bbox"] for i in items], dtype=torch.float).reshape(-1, 4), "xywh", "xyxy")


def draw(image: torch.Tensor, predictions: list[dict], truths: list[dict] | None = None,
         min_score: float = 0.3) -> torch.Tensor:
    """Boxes on a uint8 (3, H, W) image, in its own pixels: truths thin and green under confident predictions
    labelled "name score" in red, so a miss, a false alarm and a wrong class show at a glance."""
    if truths:
        image = draw_bounding_boxes(image, _xyxy(truths), colors=GREEN, width=1)
    shown = [p for p in predictions if p["score"] >= min_score]
    if shown:
        labels = [f"{p['name']} {p['score']:.2f}" for p in shown]
        image = draw_bounding_boxes(image, _xyxy(shown), labels=labels, colors=RED, width=2)
    return image


def save_grid(images: list[torch.Tensor], out: str | os.PathLike, columns: int = 4) -> None:
    """Tile uint8 (3, H, W) images of any sizes into one PNG (each padded at the bottom-right to the largest)."""
    height = max(im.shape[1] for im in images)
    width = max(im.shape[2] for im in images)
    padded = [F.pad(im, (0, width - im.shape[2], 0, height - im.shape[1])) for im in images]
    grid = make_grid(torch.stack(padded), nrow=columns)
    with atomic_path(out) as tmp:
        to_pil_image(grid.cpu()).save(tmp, format="PNG")  # the format by name: tmp ends in .tmp
