"""The detection input: the letterbox every image goes into, and CenterNet's training augmentation.

Every image goes into the network's square input by a *letterbox*: scaled so that its longer side fits,
aspect ratio kept, centred, the rest padded with black (CenterNet's affine input never stretches an
image). Evaluation does exactly that (`detection_transform`, `torchvision.transforms.v2`), or, with
`test_resolution: keep`, takes the image at its own size padded to a multiple of 32 (`Padded`). Training
applies the CenterNet recipe on top: a random square crop (0.6-1.3 of the image's side, anywhere in it),
horizontal flip, colour jitter. The letterbox, zoom, shift and flip compose into one affine map per image
(`training_matrix`), so the picture is resampled once (`warp_image`) and its boxes go through the same
map (`warp_boxes`); boxes pushed out of the picture or squeezed to nothing are dropped and counted. The
colour jitter is left to the batch, on the device (`jitter_colour`). Each sample draws from a generator
seeded by (seed, epoch, index) (`draw_augmentation`), so a sample gets the same augmentation on whichever
rank or loader worker reads it, and a resumed run sees what the uninterrupted one saw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2.functional import pil_to_tensor, rgb_to_grayscale

from frelon.data.augment import sample_seed
from frelon.data.batch_augment import rotate_hue
from frelon.errors import FrelonError
from frelon.data.crops import detection_augment

# the colour jitter's operations, in the order they are applied (ColorJitter's factors, a fixed order)
COLOUR = ("brightness", "contrast", "saturation", "hue")


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

    @property
    def canvas(self) -> tuple[int, int]:
        """The input's (height, width)."""
        return self.size, self.size

    def transforms(self) -> list:
        height, width = self.canvas
        right, bottom = width - self.new_width - self.left, height - self.new_height - self.top
        resize = [] if (self.new_height, self.new_width) == (self.height, self.width) else [
            v2.Resize((self.new_height, self.new_width), antialias=True)]
        return resize + [v2.Pad([self.left, self.top, right, bottom], fill=0)]

    def to_original(self, boxes: torch.Tensor) -> torch.Tensor:
        """XYXY boxes in input pixels -> the original image's pixels, clipped to the image."""
        scale = torch.tensor([self.new_width / self.width, self.new_height / self.height] * 2, dtype=boxes.dtype)
        shift = torch.tensor([self.left, self.top] * 2, dtype=boxes.dtype)
        out = (boxes - shift) / scale
        limit = torch.tensor([self.width, self.height] * 2, dtype=boxes.dtype)
        return torch.minimum(out.clamp(min=0), limit)


PAD_MULTIPLE = 32  # the network's total stride: every input side a multiple of it


@dataclass(frozen=True)
class Padded(Letterbox):
    """`test_resolution: keep` (the paper's --keep_res): the image at its own size, centred on a canvas whose
    sides are the next multiple of 32 above the image's (`(side | 31) + 1`, as the official code: 640 x 480
    -> 672 x 512). `size` is unused (0)."""

    size: int = 0

    @property
    def new_height(self) -> int:
        return self.height

    @property
    def new_width(self) -> int:
        return self.width

    @property
    def canvas(self) -> tuple[int, int]:
        return (self.height | (PAD_MULTIPLE - 1)) + 1, (self.width | (PAD_MULTIPLE - 1)) + 1

    @property
    def left(self) -> int:
        return (self.canvas[1] - self.width) // 2

    @property
    def top(self) -> int:
        return (self.canvas[0] - self.height) // 2


def detection_transform(letterbox: Letterbox) -> v2.Compose:
    """The evaluation input: uint8 image (a PIL image: the resize then runs in PIL's C code) + XYWH boxes in,
    float image (size x size, letterboxed, in [0, 1]) + XYXY boxes out."""
    return v2.Compose([v2.ConvertBoundingBoxFormat("XYXY"), *letterbox.transforms(), v2.ClampBoundingBoxes(),
                       v2.SanitizeBoundingBoxes(min_size=1), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


def augmentation_options(options: dict | None) -> dict:
    """The detection study's augment settings whole (`crops.detection_augment`: the defaults of the crop it
    chose), checked."""
    o = detection_augment(options)
    if o["crop"] == "shift":
        scale = o["scale"]
        if not (isinstance(scale, (list, tuple)) and len(scale) == 2 and 0 < scale[0] <= scale[1]):
            raise FrelonError(f"detection.augment.scale {scale}: give [smallest, largest] crop side as fractions of "
                              f"the image's, 0 < smallest <= largest (e.g. [0.6, 1.3]; [1, 1] for no zoom)")
    elif not (isinstance(o["scales"], (list, tuple)) and o["scales"] and all(s > 0 for s in o["scales"])):
        raise FrelonError(f"detection.augment.scales {o['scales']}: give the crop sides to draw from as fractions "
                          f"of the image's longer side, each > 0 (CenterNet's: 0.6, 0.7, ..., 1.3; [1] for none)")
    bounds = {"translate": (0, 1), "border": (0, math.inf), "flip": (0, 1), "brightness": (0, math.inf),
              "contrast": (0, math.inf), "saturation": (0, math.inf), "hue": (0, 0.5)}
    for key, (low, high) in bounds.items():
        if key in o and not low <= o[key] <= high:
            raise FrelonError(f"detection.augment.{key} {o[key]}: must be between {low} and {high} (0: off)")
    return o


class Augmentation(NamedTuple):
    """One training sample's random draws."""

    zoom: float  # magnification of the letterboxed picture about the input's centre
    shift: tuple[float, float]  # (x, y) move after the zoom, in input sides
    flip: bool  # mirrored left-right
    colour: tuple[float, float, float, float]  # brightness, contrast, saturation factors and hue shift (COLOUR)


def crop_border(border: float, extent: int) -> float:
    """The margin the random crop's centre keeps from an edge of an image `extent` pixels long: `border`,
    halved until less than half the extent (the official code's `_get_border`, on integers there)."""
    i = 1
    while extent - border // i <= border // i:
        i *= 2
    return border // i


def draw_augmentation(options: dict, seed: int, epoch: int, index: int,
                      letterbox: Letterbox | None = None) -> Augmentation:
    """Sample `index`'s draws at `epoch`, from its own generator (every distribution of the augmentation is
    here; `options` as `augmentation_options` gives them). First a mirror with probability `flip` (as
    v2.RandomHorizontalFlip drew it), then the crop, as a zoom about the input's centre and a shift:
    - `crop: random` (CenterNet's): the crop's side s x the image's longer side, s one of `scales` with equal
      chances, its centre uniform in [b, width - b] x [b', height - b'] (`crop_border` of `border`); the
      crop fills the input, so the zoom is 1 / s and the shift brings the centre to the input's. Needs the
      image's `letterbox`.
    - `crop: shift`: a zoom uniform in [1 / scale[1], 1 / scale[0]] (a crop of 0.6 fills the input, the
      picture zoomed by 1 / 0.6) and a shift uniform within +-`translate` input sides on each axis.
    Then v2.ColorJitter's factors: brightness, contrast and saturation uniform in [max(0, 1 - x), 1 + x], a
    hue shift uniform in [-x, x]."""
    generator = torch.Generator().manual_seed(sample_seed(seed, epoch, index))
    # the mirror's draw first, as v2.RandomHorizontalFlip's was when nothing else drew before it: with
    # neither zoom nor shift (the demo's setting) each image is mirrored as it was before one warp
    flip = bool(torch.rand(1, generator=generator) < options["flip"])
    u = torch.rand(7, dtype=torch.float64, generator=generator).tolist()
    ranges = [(max(0.0, 1 - options[k]), 1 + options[k]) for k in COLOUR[:3]] + [(-options["hue"], options["hue"])]
    colour = tuple(low + (high - low) * v for (low, high), v in zip(ranges, u[3:]))
    if options["crop"] == "shift":
        near, far = 1 / options["scale"][1], 1 / options["scale"][0]
        return Augmentation(zoom=near + (far - near) * u[0],
                            shift=(options["translate"] * (2 * u[1] - 1), options["translate"] * (2 * u[2] - 1)),
                            flip=flip, colour=colour)
    if letterbox is None:
        raise ValueError("crop: random draws the crop's centre in the image: give the image's letterbox")
    scales = options["scales"]
    zoom = 1 / scales[min(int(u[0] * len(scales)), len(scales) - 1)]
    shift = []
    for v, extent, scale, start in ((u[1], letterbox.width, letterbox.new_width / letterbox.width, letterbox.left),
                                    (u[2], letterbox.height, letterbox.new_height / letterbox.height, letterbox.top)):
        b = crop_border(options["border"], extent)
        centre = b + (extent - 2 * b) * v  # image pixels
        shift.append(-zoom * (scale * centre + start - letterbox.size / 2) / letterbox.size)
    return Augmentation(zoom=zoom, shift=tuple(shift), flip=flip, colour=colour)


def training_matrix(letterbox: Letterbox, augmentation: Augmentation) -> torch.Tensor:
    """The 2x3 affine map (float64) from the image's pixel coordinates to the input's: the letterbox (the
    evaluation's scale and offset), then the zoom about the input's centre, the shift, and the mirror."""
    size, centre = letterbox.size, letterbox.size / 2
    zoom, (shift_x, shift_y) = augmentation.zoom, augmentation.shift
    scale_x = zoom * letterbox.new_width / letterbox.width
    scale_y = zoom * letterbox.new_height / letterbox.height
    offset_x = zoom * (letterbox.left - centre) + centre + shift_x * size
    offset_y = zoom * (letterbox.top - centre) + centre + shift_y * size
    if augmentation.flip:  # x -> size - x
        scale_x, offset_x = -scale_x, size - offset_x
    return torch.tensor([[scale_x, 0.0, offset_x], [0.0, scale_y, offset_y]], dtype=torch.float64)


def _covered(scale: float, offset: float, extent: int, size: int) -> tuple[int, int]:
    """The input pixels [first, last) that the picture's [0, extent) covers whole (to a rounding error) under
    x -> scale x + offset (scale > 0), within [0, size)."""
    slack = 1e-6
    return max(0, math.ceil(offset - slack)), min(size, math.floor(scale * extent + offset + slack))


def warp_image(image: Image.Image, matrix: torch.Tensor, size: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """`image` resampled once into the size x size input by an axis-aligned affine `matrix` (image pixels to
    input pixels: scale, offset, mirror), black outside: uint8 (3, size, size), written into `out` if given.

    PIL's resize of a source box does the scale and offset in one bilinear pass in C (into 512 x 512, one
    thread: 2.1 ms, against 4.5 for PIL's affine transform and 2.4 for torch's affine_grid + grid_sample,
    measured). Its filter is bilinear interpolation when it enlarges and widens when it shrinks, as the
    evaluation's letterbox resize (the same call), so a draw of zoom 1 and no shift gives the evaluation's
    pixels exactly. Input pixels the picture covers only in part, at its edges, stay black; the mirror is
    a copy of the resampled pixels.
    """
    (scale_x, shear_x, offset_x), (shear_y, scale_y, offset_y) = matrix.tolist()
    if shear_x or shear_y or scale_y <= 0 or scale_x == 0:
        raise ValueError(f"warp_image takes scale, offset and a left-right mirror only, not {matrix.tolist()}")
    mirror = scale_x < 0
    if mirror:  # resample unmirrored, then mirror the pixels into place
        scale_x, offset_x = -scale_x, size - offset_x
    out = torch.zeros(3, size, size, dtype=torch.uint8) if out is None else out.zero_()
    (x0, x1), (y0, y1) = _covered(scale_x, offset_x, image.width, size), _covered(scale_y, offset_y, image.height, size)
    if x1 > x0 and y1 > y0:
        box = (max(0.0, (x0 - offset_x) / scale_x), max(0.0, (y0 - offset_y) / scale_y),
               min(image.width, (x1 - offset_x) / scale_x), min(image.height, (y1 - offset_y) / scale_y))
        piece = pil_to_tensor(image.resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR, box=box))
        if mirror:
            out[:, y0:y1, size - x1:size - x0] = piece.flip(-1)
        else:
            out[:, y0:y1, x0:x1] = piece
    return out


def warp_boxes(boxes_xywh: list[list[float]], labels: list[int], matrix: torch.Tensor,
               size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """XYWH boxes (image pixels) through `matrix` as the pixels go: XYXY boxes (float32) in the size x size
    input, clamped to it (a mirror swaps x1 and x2), their labels, and how many were dropped: those left
    narrower or lower than a pixel (v2.SanitizeBoundingBoxes' rule), with their labels."""
    boxes = torch.tensor(boxes_xywh, dtype=torch.float64).reshape(-1, 4)
    corners = torch.stack([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1)  # (N, 2 corners, xy)
    moved = corners @ matrix[:, :2].T + matrix[:, 2]
    xyxy = torch.cat([moved.amin(1), moved.amax(1)], 1).clamp(0, size)
    keep = (xyxy[:, 2:] - xyxy[:, :2] >= 1).all(1)
    return xyxy[keep].float(), torch.tensor(labels, dtype=torch.int64)[keep], int((~keep).sum())


def jitter_colour(images: torch.Tensor, factors: dict[str, torch.Tensor]) -> torch.Tensor:
    """Float images (B, 3, H, W) in [0, 1] (on any device), each with its own colour factors: `factors` maps
    each operation of COLOUR to apply to a (B,) tensor, and they run in COLOUR's order, for the whole batch
    at once. Image by image, v2.functional's adjust_brightness, adjust_contrast, adjust_saturation and
    adjust_hue (tested); an operation not in `factors` is skipped. Works in place where it can (a batch
    of float images is large: fresh tensors for each step cost more than the arithmetic on a CPU), so
    `images` is overwritten; use the result."""
    unknown = sorted(set(factors) - set(COLOUR))
    if unknown:
        raise ValueError(f"colour operations {unknown}: unknown; they are {list(COLOUR)}")
    for name in (n for n in COLOUR if n in factors):
        factor = factors[name].to(images).view(-1, 1, 1, 1)
        if name == "brightness":
            images.mul_(factor).clamp_(0, 1)
        elif name == "contrast":  # towards the image's mean grey
            grey = rgb_to_grayscale(images).mean((-3, -2, -1), keepdim=True)
            images.mul_(factor).add_(grey.mul_(1 - factor)).clamp_(0, 1)
        elif name == "saturation":  # towards each pixel's grey
            grey = rgb_to_grayscale(images).mul_(1 - factor)
            images.mul_(factor).add_(grey).clamp_(0, 1)
        else:  # adjust_hue takes one factor per call: the same HSV round trip with one per image
            images = rotate_hue(images, factor.view(-1))
    return images


def letterboxed(image: Image.Image, size: int) -> tuple[torch.Tensor, Letterbox]:
    """An RGB picture as the network's evaluation input (float in [0, 1], letterboxed to `size`), and
    where it lies there: what `frelon detect` and the ONNX export's check feed the network."""
    letterbox = Letterbox(image.height, image.width, size)
    return apply(detection_transform(letterbox), image, [], [], seed=0, epoch=0, index=0)[0], letterbox


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
