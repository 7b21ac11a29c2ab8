"""CenterNet's training targets: a Gaussian peak per object on its class heatmap, its size and sub-cell offset."""

from __future__ import annotations

import math

import torch

from frelon.errors import FrelonError


def _root(a, b: torch.Tensor, c: torch.Tensor, sign: int) -> torch.Tensor:
    """A root of a r² + b r + c = 0 (sign -1 or +1 before the square root), as each IoU case needs one."""
    return (-b + sign * torch.sqrt(b * b - 4 * a * c)) / (2 * a)


def gaussian_radius(height, width, min_overlap: float = 0.7):
    """How far a box's corners may move and keep IoU >= min_overlap with it: the spread of its heatmap peak.
    Of one box (floats in, a float out) or, elementwise, of many (tensors, computed in float64: the same
    numbers as one by one, so that a batch's peaks are an image's).

    With h, w the box's size, t = min_overlap and r how far each corner moves along both axes, CornerNet's
    three cases each bound r by a root of a quadratic a r² + b r + c:

    1. One corner inside, one outside (the box shifted by r): overlap (h - r)(w - r), union 2hw - overlap.
           (h - r)(w - r) / (2hw - (h - r)(w - r)) >= t
           <=> r² - (h + w) r + (1 - t) / (1 + t) hw >= 0
           a = 1, b = -(h + w), c = (1 - t) / (1 + t) hw;  r <= (-b - sqrt(b² - 4ac)) / (2a)
    2. Both corners inside (the box shrunk by r on every side): overlap (h - 2r)(w - 2r), union hw.
           (h - 2r)(w - 2r) / hw >= t
           <=> 4 r² - 2 (h + w) r + (1 - t) hw >= 0
           a = 4, b = -2 (h + w), c = (1 - t) hw;  r <= (-b - sqrt(b² - 4ac)) / (2a)
    3. Both corners outside (the box grown by r on every side): overlap hw, union (h + 2r)(w + 2r).
           hw / ((h + 2r)(w + 2r)) >= t
           <=> 4t r² + 2t (h + w) r - (1 - t) hw <= 0
           a = 4t, b = 2t (h + w), c = -(1 - t) hw;  r <= (-b + sqrt(b² - 4ac)) / (2a)

    In cases 1 and 2 the smaller root is the bound (the larger lies beyond half the box); in case 3 the
    positive one. The radius is the smallest of the three bounds.
    """
    one = not isinstance(height, torch.Tensor)
    height, width = torch.as_tensor(height, dtype=torch.float64), torch.as_tensor(width, dtype=torch.float64)
    t, hw, s = min_overlap, height * width, height + width
    # CenterNet's official gaussian_radius keeps CornerNet's pre-2019 bug: every root divided by 2, not 2a,
    # and the far root (-b + sqrt(…)) in cases 1 and 2, so its min() is always case 3 at 4t (2.8 at t = 0.7)
    # times that case's true bound, 3.3-3.8x this radius; mmdetection uses these fixed roots with min_overlap 0.3.
    shifted = _root(1, -s, (1 - t) / (1 + t) * hw, -1)
    shrunk = _root(4, -2 * s, (1 - t) * hw, -1)
    grown = _root(4 * t, 2 * t * s, -(1 - t) * hw, +1)
    radius = torch.minimum(torch.minimum(shifted, shrunk), grown)
    return radius.item() if one else radius


def gaussian_kernel(radius: int) -> torch.Tensor:
    """One object's peak: exactly 1 at its centre, about 0.01 at the radius (sigma = diameter / 6), so the
    focal loss penalises near misses less."""
    sigma = (2 * radius + 1) / 6
    d = torch.arange(-radius, radius + 1, dtype=torch.float32)
    return torch.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * sigma**2))


def draw_gaussian(heatmap: torch.Tensor, center: tuple[int, int], radius: int) -> None:
    """Put one object's peak on its (H, W) class map; where peaks overlap the larger wins, so each centre stays 1."""
    x, y = center
    height, width = heatmap.shape
    if not (0 <= x < width and 0 <= y < height):
        raise ValueError(f"centre (x={x}, y={y}) is outside the {height}x{width} heatmap: clamp it into the grid")
    left, right = min(x, radius), min(width - x, radius + 1)
    top, bottom = min(y, radius), min(height - y, radius + 1)
    window = heatmap[y - top:y + bottom, x - left:x + right]
    kernel = gaussian_kernel(radius)[radius - top:radius + bottom, radius - left:radius + right]
    window.copy_(torch.maximum(window, kernel.to(window)))


def values_at(maps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) maps read at the flat cells y * W + x of `index` (B, K), as (B, K, D): where objects are."""
    flat = maps.flatten(2).gather(2, index.unsqueeze(1).expand(-1, maps.shape[1], -1))
    return flat.transpose(1, 2)


def _grid(objects: int, max_objects: int, input_size: tuple[int, int], stride: int) -> tuple[int, int]:
    """The output grid's (height, width), once the objects fit in `max_objects` and the input in the stride."""
    if objects > max_objects:
        raise FrelonError(f"{objects} objects in one image, more than max_objects={max_objects}: "
                          f"raise max_objects to at least {objects}")
    if input_size[0] % stride or input_size[1] % stride:
        raise FrelonError(f"input size {tuple(input_size)} is not divisible by the output stride {stride}: "
                          f"resize or pad the input to a multiple of {stride}")
    return input_size[0] // stride, input_size[1] // stride


def build_targets(boxes: torch.Tensor, labels: torch.Tensor, num_classes: int, input_size: tuple[int, int],
                  stride: int = 4, max_objects: int = 128, min_overlap: float = 0.7) -> dict[str, torch.Tensor]:
    """One image's targets on the output grid, padded to `max_objects` so that images batch by stacking.

    `boxes` (N, 4) are XYXY in input pixels, `labels` (N,) contiguous class indices. Boxes with no area left
    once clamped to the grid are skipped and counted in "skipped".
    """
    height, width = _grid(len(boxes), max_objects, input_size, stride)
    heatmap = torch.zeros(num_classes, height, width)
    size, offset = torch.zeros(max_objects, 2), torch.zeros(max_objects, 2)
    index, mask = torch.zeros(max_objects, dtype=torch.int64), torch.zeros(max_objects)
    limits = torch.tensor([width, height, width, height], dtype=torch.float32)
    on_grid = torch.minimum((boxes.float() / stride).clamp(min=0), limits)
    skipped = 0
    for k, ((x1, y1, x2, y2), label) in enumerate(zip(on_grid.tolist(), labels.tolist())):
        w, h = x2 - x1, y2 - y1
        if w <= 0 or h <= 0:
            skipped += 1
            continue
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        x, y = min(int(cx), width - 1), min(int(cy), height - 1)
        radius = max(0, int(gaussian_radius(math.ceil(h), math.ceil(w), min_overlap)))
        draw_gaussian(heatmap[label], (x, y), radius)
        size[k] = torch.tensor([w, h])
        offset[k] = torch.tensor([cx - x, cy - y])
        index[k] = y * width + x
        mask[k] = 1
    return {"heatmap": heatmap, "size": size, "offset": offset, "index": index, "mask": mask,
            "skipped": torch.tensor(skipped, dtype=torch.int64)}


def build_targets_batch(boxes: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, num_classes: int,
                        input_size: tuple[int, int], stride: int = 4, max_objects: int = 128,
                        min_overlap: float = 0.7) -> dict[str, torch.Tensor]:
    """A batch's targets at once, on the device of `boxes`: each image's `build_targets` (equal within
    float rounding, tested), with tensor operations over every object of the batch instead of a loop.

    `boxes` (B, K, 4) are XYXY in input pixels, `labels` (B, K) contiguous class indices, `valid` (B, K)
    which of the K slots hold an object (images with fewer objects are padded). Each object's peak is
    computed on a window of the largest radius any box on the grid can have, masked to its own radius and
    to the grid, and max-merged into its class's heatmap by one scatter: a fixed shape, so no value is
    read back to the host. "skipped" counts, per image, the objects with no area on the grid.
    """
    batch, slots = labels.shape
    height, width = _grid(slots, max_objects, input_size, stride)
    device = boxes.device
    # clamped in float32 as build_targets does (limits as numbers: no copy to the device, no wait for it),
    # then its Python arithmetic in float64
    on_grid = (boxes.float() / stride).clamp(min=0)
    x1, x2 = on_grid[..., 0::2].clamp(max=width).double().unbind(-1)
    y1, y2 = on_grid[..., 1::2].clamp(max=height).double().unbind(-1)
    w, h = x2 - x1, y2 - y1
    drawn = valid & (w > 0) & (h > 0)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    x, y = cx.trunc().clamp(max=width - 1), cy.trunc().clamp(max=height - 1)
    # a radius grows with the box, so none exceeds that of a box as large as the grid
    radius = gaussian_radius(h.ceil().clamp(min=1), w.ceil().clamp(min=1), min_overlap).trunc().clamp(min=0)
    reach = max(0, int(gaussian_radius(height, width, min_overlap)))
    d = torch.arange(-reach, reach + 1, dtype=torch.float32, device=device)
    spread = (2 * ((2 * radius + 1) / 6) ** 2).float()  # gaussian_kernel's 2 sigma², per object
    peak = torch.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / spread[..., None, None])  # (B, K, window, window)
    near = d.abs() <= radius[..., None]
    xs, ys = x[..., None] + d, y[..., None] + d
    on_x, on_y = near & (xs >= 0) & (xs < width), near & (ys >= 0) & (ys < height)
    keep = drawn[..., None, None] & on_y[..., :, None] & on_x[..., None, :]
    label = labels.where(drawn, 0)
    cell = ((label[..., None] * height + ys.clamp(0, height - 1)).long()[..., :, None] * width
            + xs.clamp(0, width - 1).long()[..., None, :])
    heatmap = torch.zeros(batch, num_classes * height * width, device=device)
    heatmap.scatter_reduce_(1, cell.flatten(1), peak.where(keep, 0).flatten(1), "amax")

    def slots_of(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Per-object values in the first K of `max_objects` slots, zero where no object is drawn."""
        values = values.where(drawn.view(*drawn.shape, *[1] * (values.ndim - 2)), 0).to(dtype)
        return torch.nn.functional.pad(values, (0, 0) * (values.ndim - 2) + (0, max_objects - slots))

    return {"heatmap": heatmap.view(batch, num_classes, height, width),
            "size": slots_of(torch.stack([w, h], -1), torch.float32),
            "offset": slots_of(torch.stack([cx - x, cy - y], -1), torch.float32),
            "index": slots_of(y * width + x, torch.int64), "mask": slots_of(drawn, torch.float32),
            "skipped": (valid & ~drawn).sum(1)}
