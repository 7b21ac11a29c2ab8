"""Online, box-aware augmentation for detection, with `torchvision.transforms.v2`.

Every image first goes into the network's square input by a *letterbox*: scaled so that its longer
side fits, aspect ratio kept, centred, the rest padded with black (CenterNet's affine input never
stretches an image). Training then applies the CenterNet recipe: random scale (0.6-1.3) and shift
of that square, horizontal flip, colour jitter. Boxes (`tv_tensors.BoundingBoxes`) move with the
pixels; boxes pushed out of the image or squeezed to nothing are dropped with their labels
(`SanitizeBoundingBoxes`) and counted. Each sample draws from a generator seeded by (seed, epoch,
index), so a sample gets the same augmentation on whichever rank or loader worker reads it, and a
resumed run sees what the uninterrupted one saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from frelon.data.augment import sample_seed
from frelon.spec import AUGMENT_DEFAULTS


@dataclass(frozen=True)
class Letterbox:
    """Where an image of `height` x `width` lies in the `size` x `size` input: resized to
    `new_height` x `new_width` (aspect kept), its top-left corner at (`left`, `top`)."""

    height: int
    width: int
    size: int

    @property
    def new_height(self) -> int:
        return max(1, round(self.height * self.size / max(self.height, self.width)))

    @property
    def new_width(self) -> int:
        return max(1, round(self.width * self.size / max(self.height, self.width)))

    @property
    def left(self) -> int:
        return (self.size - self.new_width) // 2

    @property
    def top(self) -> int:
        return (self.size - self.new_height) // 2

    def transforms(self) -> list:
        right, bottom = self.size - self.new_width - self.left, self.size - self.new_height - self.top
        return [v2.Resize((self.new_height, self.new_width), antialias=True),
                v2.Pad([self.left, self.top, right, bottom], fill=0)]

    def to_original(self, boxes: torch.Tensor) -> torch.Tensor:
        """XYXY boxes in input pixels -> the original image's pixels, clipped to the image."""
        scale = torch.tensor([self.new_width / self.width, self.new_height / self.height] * 2, dtype=boxes.dtype)
        shift = torch.tensor([self.left, self.top] * 2, dtype=boxes.dtype)
        out = (boxes - shift) / scale
        limit = torch.tensor([self.width, self.height] * 2, dtype=boxes.dtype)
        return torch.minimum(out.clamp(min=0), limit)


def detection_transform(letterbox: Letterbox, train: bool, options: dict | None = None) -> v2.Compose:
    """uint8 image (a PIL image: the geometry and colour steps then run in PIL's C code, twice as fast
    as on a tensor, measured at 512) + XYWH boxes in, float image (size x size, in [0, 1]) + XYXY boxes out."""
    o = {**AUGMENT_DEFAULTS, **(options or {})}
    steps: list = [v2.ConvertBoundingBoxFormat("XYXY"), *letterbox.transforms()]
    if train:
        # `scale` is the side of the crop taken, as a fraction of the image's (CenterNet's s): a crop of
        # 0.6 fills the input, so the picture is zoomed by 1 / 0.6; RandomAffine's scale is that zoom
        zoom = (1 / o["scale"][1], 1 / o["scale"][0])
        # a step set to do nothing is left out: an identity affine still resamples every image
        if o["translate"] or zoom != (1, 1):
            steps.append(v2.RandomAffine(degrees=0, translate=(o["translate"], o["translate"]), scale=zoom))
        if o["flip"]:
            steps.append(v2.RandomHorizontalFlip(o["flip"]))
        if any(o[k] for k in ("brightness", "contrast", "saturation", "hue")):
            steps.append(v2.ColorJitter(o["brightness"], o["contrast"], o["saturation"], o["hue"]))
    steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1), v2.ToImage(),
              v2.ToDtype(torch.float32, scale=True)]
    return v2.Compose(steps)


def letterboxed(image: Image.Image, size: int) -> tuple[torch.Tensor, Letterbox]:
    """An RGB picture as the network's evaluation input (float in [0, 1], letterboxed to `size`), and
    where it lies there: what `frelon detect` and the ONNX export's check feed the network."""
    letterbox = Letterbox(image.height, image.width, size)
    return apply(detection_transform(letterbox, train=False), image, [], [], seed=0, epoch=0, index=0)[0], letterbox


def apply(transform: v2.Compose, image: Image.Image | torch.Tensor, boxes_xywh: list[list[float]],
          labels: list[int], seed: int, epoch: int, index: int) -> tuple[torch.Tensor, dict]:
    """Transform one sample (an RGB PIL image, or a uint8 (3, H, W) tensor) with its own seeded draw;
    the target holds `boxes` (XYXY), `labels` and `dropped` (boxes the augmentation pushed out of the
    picture)."""
    if isinstance(image, Image.Image):
        width, height = image.size
    else:
        height, width = image.shape[-2:]
        image = tv_tensors.Image(image)
    boxes = tv_tensors.BoundingBoxes(torch.tensor(boxes_xywh, dtype=torch.float32).reshape(-1, 4), format="XYWH",
                                     canvas_size=(height, width))
    target = {"boxes": boxes, "labels": torch.tensor(labels, dtype=torch.int64)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sample_seed(seed, epoch, index))
        out_image, out = transform(image, target)
    out["dropped"] = len(labels) - len(out["labels"])
    return out_image, out
