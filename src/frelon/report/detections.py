"""A picture per run: validation images with the true boxes (green) and the predicted ones (red)."""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert
from torchvision.transforms.v2.functional import resize, to_pil_image
from torchvision.utils import draw_bounding_boxes, make_grid

from frelon.atomic import atomic_path

GREEN, RED = (0, 255, 0), (255, 0, 0)
# A run's picture shows each validation image with its shorter side at least this many pixels (a whole
# multiple of its own), so that the labels are legible beside images of 48 to 96 px
PICTURE_SIDE = 256


def _xyxy(items: list[dict]) -> torch.Tensor:
    return box_convert(torch.tensor([i["bbox"] for i in items], dtype=torch.float).reshape(-1, 4), "xywh", "xyxy")


def _overlap(a: tuple, b: tuple) -> float:
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def place_labels(boxes: list[tuple], sizes: list[tuple[int, int]], width: int, height: int) -> list[tuple]:
    """Where each box's label goes, in order (the first placed first): (x0, y0, x1, y1) of a `sizes` (w, h)
    rectangle inside the image, above the box's top-left corner where it fits, else below the box, inside
    it, right-aligned, or stacked above or below a label already placed: the first place that overlaps no
    label already placed, or the one that overlaps them least."""
    placed = []
    for (x0, y0, x1, y1), (w, h) in zip(boxes, sizes):
        corners = [(x0, y0 - h), (x0, y1), (x0, y0), (x0, y1 - h), (x1 - w, y0 - h), (x1 - w, y1)]
        corners += [(x0, p[3]) for p in placed] + [(x0, p[1] - h) for p in placed]
        best = None
        for x, y in corners:
            x, y = min(max(0, x), max(0, width - w)), min(max(0, y), max(0, height - h))
            spot = (x, y, x + w, y + h)
            covered = sum(_overlap(spot, p) for p in placed)
            if best is None or covered < best[0]:
                best = (covered, spot)
            if covered == 0:
                break
        placed.append(best[1])
    return placed


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType: its one bitmap font
        return ImageFont.load_default()


def _labels(image: torch.Tensor, boxes: torch.Tensor, texts: list[str], colors: list[tuple]) -> torch.Tensor:
    """Each text on a patch of its box's colour, placed where no other label covers it (see place_labels)."""
    from PIL import ImageDraw
    from torchvision.transforms.v2.functional import pil_to_tensor

    picture = to_pil_image(image)
    pen = ImageDraw.Draw(picture)
    font = _font(max(10, min(16, min(picture.size) // 20)))
    extents = [pen.textbbox((0, 0), text, font=font) for text in texts]
    sizes = [(right - left + 4, bottom - top + 4) for left, top, right, bottom in extents]
    spots = place_labels([tuple(round(v) for v in box.tolist()) for box in boxes], sizes, *picture.size)
    for text, (left, top, _, _), spot, color in zip(texts, extents, spots, colors):
        pen.rectangle((spot[0], spot[1], spot[2] - 1, spot[3] - 1), fill=color)  # PIL's includes its far corner
        pen.text((spot[0] + 2 - left, spot[1] + 2 - top), text, font=font,
                 fill=(255, 255, 255) if color == RED else (0, 0, 0))
    return pil_to_tensor(picture)


def draw(image: torch.Tensor, predictions: list[dict], truths: list[dict] | None = None,
         min_score: float = 0.3, min_side: int | None = None) -> torch.Tensor:
    """Boxes on a uint8 (3, H, W) image: truths thin and green under confident predictions in red, each
    labelled ("name", "name score") where no other label covers it, so a miss, a false alarm and a wrong
    class show at a glance. The image is enlarged by a whole factor until its shorter side is `min_side`
    or more; by default PICTURE_SIDE for a picture with truths (a run's validation images), and none for
    one without (an annotated frame keeps its video's size)."""
    side = (PICTURE_SIDE if truths is not None else 0) if min_side is None else min_side
    scale = max(1, math.ceil(side / min(image.shape[1:])))
    if scale > 1:
        image = resize(image, [image.shape[1] * scale, image.shape[2] * scale], antialias=True)
    shown = sorted((p for p in predictions if p["score"] >= min_score), key=lambda p: -p["score"])
    truth_boxes, shown_boxes = _xyxy(truths or []) * scale, _xyxy(shown) * scale
    if truths:
        image = draw_bounding_boxes(image, truth_boxes, colors=GREEN, width=1 + (scale > 1))
    if shown:
        image = draw_bounding_boxes(image, shown_boxes, colors=RED, width=2 + (scale > 1))
    # the predictions' labels first, the most confident first: they get the places nearest their boxes
    texts = [f"{p['name']} {p['score']:.2f}" for p in shown] + [t["name"] for t in truths or []]
    if texts:
        image = _labels(image, torch.cat([shown_boxes, truth_boxes]), texts,
                        [RED] * len(shown) + [GREEN] * len(truths or []))
    return image


def save_grid(images: list[torch.Tensor], out: str | os.PathLike, columns: int = 4) -> None:
    """Tile uint8 (3, H, W) images of any sizes into one PNG (each padded at the bottom-right to the largest)."""
    height = max(im.shape[1] for im in images)
    width = max(im.shape[2] for im in images)
    padded = [F.pad(im, (0, width - im.shape[2], 0, height - im.shape[1])) for im in images]
    grid = make_grid(torch.stack(padded), nrow=columns)
    with atomic_path(out) as tmp:
        to_pil_image(grid.cpu()).save(tmp, format="PNG")  # the format by name: tmp ends in .tmp
