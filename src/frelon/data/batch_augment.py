"""Online augmentation of a whole batch at once, on whichever device the batch is on.

The loader draws each sample's parameters on the host (`draw`: a few numbers a sample, from the
generator seeded by (seed, epoch, index), in the order and with the calls of torchvision's v2
transforms, so each sample gets the draws `augment.online`'s transforms give it) and ships the uint8
images with them; `apply` then mirrors, warps, colours, adds noise and erases the whole batch with
tensor ops on the GPU (or on CPU tensors in a loader worker). Per sample it computes what
torchvision's kernels compute with the same parameters (tested within float tolerance):

- affine: torchvision's inverse matrix and sampling grid, nearest-neighbour `grid_sample` (the
  default of `v2.RandomAffine`), one grid per sample;
- colour: brightness, contrast, saturation and hue in each sample's own random order (ColorJitter's
  `fn_idx`), with its grayscale weights and blends;
- noise: N(0, sigma) added and clipped to [0, 1] (`v2.GaussianNoise`), but drawn from a generator of
  its own, seeded by (seed, epoch, index, 1) on the batch's device: the main stream's draws stay a
  few numbers a sample, and the noise is made where it is added (on a GPU, by CUDA's generator: the
  same on every rank and on resume, not the CPU's numbers);
- erasing: a rectangle set to 0 (`v2.RandomErasing`'s default value).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

# the grayscale of ITU-R 601-2, as torchvision's rgb_to_grayscale
GRAY = (0.2989, 0.587, 0.114)
NOISE_KEY = 1  # the fourth key of a sample's noise seed: (seed, epoch, index, NOISE_KEY)


class Draws(NamedTuple):
    """The augmentation parameters of a batch of B samples (None: the transform is not used)."""
    mirror: torch.Tensor | None        # (B,) bool
    affine: torch.Tensor | None        # (B, 2, 3) inverse matrices, pixels about the image centre
    colour_order: torch.Tensor | None  # (B, 4) int64: each sample's order of brightness, contrast, saturation, hue
    colour: torch.Tensor | None        # (B, 4) float factors, in that order (1, 1, 1, 0 where one is not used)
    hue: bool                          # whether hue is jittered at all
    noise_seed: tuple[int, ...] | None  # B seeds: plain ints, read on the host without waiting for a GPU
    noise_sigma: float
    erase: torch.Tensor | None         # (B, 4) int64: top, left, height, width (height 0: not erased)


class Drawer:
    """Draws a sample's parameters of the named transforms, `augment.online`'s settings."""

    def __init__(self, names, options: dict, height: int, width: int):
        from torchvision import tv_tensors

        from frelon.data.augment import ORDER, transforms

        self.names = [name for name in ORDER if name in names]
        self.options = options
        self.transforms = dict(zip(self.names, transforms(self.names, options)))
        # make_params reads the image's size from its inputs: an empty image of the split's size
        self._shape = [tv_tensors.Image(torch.empty(3, height, width))]
        self.height, self.width = height, width

    def sample(self, seed: int) -> dict:
        """One sample's parameters: the draws torchvision's transforms make from a generator seeded with
        `seed`, in the same order (a transform applied with probability p draws `rand(1) < p` first)."""
        out: dict = {}
        with torch.random.fork_rng(devices=[]):  # the CPU generator only: CUDA's is the training's
            torch.default_generator.manual_seed(seed)
            for name in self.names:
                t = self.transforms[name]
                if name == "mirror":
                    out["mirror"] = bool(torch.rand(1) < t.p)
                elif name == "affine":
                    out["affine"] = t.make_params(self._shape)
                elif name == "colour":
                    out["colour"] = t.make_params(self._shape)
                elif name == "erasing":
                    out["erase"] = t.make_params(self._shape) if torch.rand(1) < t.p else None
        return out

    def batch(self, seeds: list[int], noise_seeds: list[int]) -> Draws:
        """The parameters of a batch, as tensors on the host."""
        samples = [self.sample(s) for s in seeds]
        names = self.names
        mirror = torch.tensor([s["mirror"] for s in samples]) if "mirror" in names else None
        affine = (torch.tensor([inverse_affine(self.height, self.width, **s["affine"]) for s in samples],
                               dtype=torch.float32).view(-1, 2, 3) if "affine" in names else None)
        order = colour = None
        hue = False
        if "colour" in names:
            order = torch.stack([s["colour"]["fn_idx"] for s in samples])
            keys, neutral = ("brightness", "contrast", "saturation", "hue"), (1.0, 1.0, 1.0, 0.0)
            colour = torch.tensor([[s["colour"][f"{k}_factor"] if s["colour"][f"{k}_factor"] is not None else n
                                    for k, n in zip(keys, neutral)] for s in samples], dtype=torch.float32)
            hue = samples[0]["colour"]["hue_factor"] is not None if samples else False
        erase = None
        if "erasing" in names:
            erase = torch.tensor([_erase_box(s["erase"]) for s in samples], dtype=torch.int64).view(-1, 4)
        noise = "noise" in names
        return Draws(mirror, affine, order, colour, hue,
                     tuple(noise_seeds) if noise else None,
                     float(self.options["noise_sigma"]) if noise else 0.0, erase)


def _erase_box(params: dict | None) -> tuple[int, int, int, int]:
    """RandomErasing's rectangle, or an empty one where it erases nothing (not drawn, or no fit found)."""
    if params is None or params["v"] is None:
        return (0, 0, 0, 0)
    if bool((params["v"] != 0).any()):
        raise ValueError("only erasing with 0 is batched")
    return (int(params["i"]), int(params["j"]), int(params["h"]), int(params["w"]))


def inverse_affine(height: int, width: int, angle: float, translate: list, scale: float, shear: list,
                   center=None) -> list[float]:
    """The output-to-input matrix of a rotation by `angle` degrees about the image centre, scaled and
    translated (no shear): torchvision's `_get_inverse_affine_matrix` for tensors (centre at (0, 0))."""
    if any(shear) or center is not None:
        raise ValueError("shear and a rotation centre other than the image's are not batched")
    rot = math.radians(angle)
    a, b, c, d = math.cos(rot), -math.sin(rot), math.sin(rot), math.cos(rot)
    tx, ty = (float(v) for v in translate)
    m = [d / scale, -b / scale, 0.0, -c / scale, a / scale, 0.0]
    m[2] += -m[0] * tx - m[1] * ty
    m[5] += -m[3] * tx - m[4] * ty
    return m


def warp(images: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Float (B, C, H, W) images through per-sample inverse matrices (B, 2, 3), nearest neighbour, 0
    outside: torchvision's grid (pixel centres about the image centre, normalised after the matrix)."""
    b, _, h, w = images.shape
    dev, dtype = images.device, images.dtype
    xs = torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w, device=dev, dtype=dtype)
    ys = torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h, device=dev, dtype=dtype)
    base = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w), torch.ones(h, w, device=dev, dtype=dtype)], -1)
    theta = inverse.to(device=dev, dtype=dtype).transpose(1, 2) / torch.tensor([0.5 * w, 0.5 * h], device=dev,
                                                                                  dtype=dtype)
    grid = base.view(1, h * w, 3).expand(b, -1, -1).bmm(theta).view(b, h, w, 2)
    return F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (r * GRAY[0] + g * GRAY[1] + b * GRAY[2]).unsqueeze(1)


def rotate_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Float images (B, 3, H, W) in [0, 1], each one's hue rotated by its `shift` (B,) of a turn: RGB -> HSV as torchvision (Pillow's formulas), back with
    the closed form f(n) = V - V S clamp(min(k, 4 - k), 0, 1), k = (n + 6H) mod 6, n = 5, 3, 1."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    span = maxc - minc
    flat = span == 0
    s = span / torch.where(flat, torch.ones_like(maxc), maxc)
    div = torch.where(flat, torch.ones_like(span), span)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(flat, torch.zeros_like(h), h)
    h = (h / 6.0 + 1.0).fmod(1.0)
    h = (h + shift.view(-1, 1, 1)).remainder(1.0)
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = (n + h.unsqueeze(1) * 6).remainder(6)
    v, s = maxc.unsqueeze(1), s.unsqueeze(1)
    return v - v * s * torch.minimum(k, 4 - k).clamp(0, 1)


def colour_jitter(x: torch.Tensor, order: torch.Tensor, factors: torch.Tensor, hue: bool,
                  subset: bool | None = None) -> torch.Tensor:
    """ColorJitter with per-sample factors (B, 4) and order (B, 4), float images in [0, 1]. Brightness,
    contrast and saturation are each a blend f x + (1 - f) t with t = 0, the image's mean gray, its
    gray: one blend a step covers every sample whichever of the three it does then. The hue step runs
    on the samples that do it at that step (`subset`, the default on the CPU: a loader worker computes
    no more than it must), or on all of them, the others kept (the default on a GPU: no mask is read on
    the host, so nothing waits for the GPU)."""
    subset = x.device.type == "cpu" if subset is None else subset
    view = (-1, 1, 1, 1)
    for step in range(4):
        op = order[:, step]
        f = factors.gather(1, op.view(-1, 1)).view(view)
        gray = _gray(x)
        target = torch.where((op == 1).view(view), gray.mean((1, 2, 3), keepdim=True), gray)
        target = torch.where((op == 0).view(view), torch.zeros_like(gray), target)
        blended = (x * f + target * (1 - f)).clamp(0, 1)
        x = torch.where((op < 3).view(view), blended, x)
        if hue and subset:
            index = (op == 3).nonzero().view(-1)
            if len(index):
                x = x.index_copy(0, index, rotate_hue(x.index_select(0, index), factors[index, 3]))
        elif hue:
            x = torch.where((op == 3).view(view), rotate_hue(x, factors[:, 3]), x)
    return x


def add_noise(x: torch.Tensor, seeds: tuple[int, ...], sigma: float) -> torch.Tensor:
    """x + N(0, sigma) clipped to [0, 1], each sample's noise from its own generator on x's device."""
    noise = torch.empty(x.shape, device=x.device, dtype=x.dtype)  # contiguous, whatever x's layout
    for k, seed in enumerate(seeds):
        generator = torch.Generator(device=x.device).manual_seed(seed)
        torch.randn(x.shape[1:], generator=generator, device=x.device, dtype=x.dtype, out=noise[k])
    return (x + noise * sigma).clamp(0, 1)


def erase(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Per-sample rectangles (top, left, height, width) set to 0; height 0 erases nothing."""
    _, _, h, w = x.shape
    top, left, height, width = (v.view(-1, 1, 1) for v in boxes.to(x.device).unbind(1))
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)
    return x.masked_fill(inside.unsqueeze(1), 0)


# On the CPU the batch goes through in slices of about this many bytes of float32, which stay in the
# cache from one step to the next: whole batches at 224 px run 2-4x slower there (measured, one thread)
CPU_SLICE_BYTES = 1 << 20


def apply(images: torch.Tensor, draws: Draws) -> torch.Tensor:
    """uint8 (B, 3, H, W) images augmented as `draws` says, float in [0, 1], on the images' device."""
    per_slice = max(1, CPU_SLICE_BYTES // (4 * images[0].numel())) if len(images) else 1
    if images.device.type == "cpu" and len(images) > per_slice:
        return torch.cat([_apply(images[a:a + per_slice], _rows(draws, a, a + per_slice))
                          for a in range(0, len(images), per_slice)])
    return _apply(images, draws)


def _rows(draws: Draws, start: int, end: int) -> Draws:
    """The draws of samples start..end-1."""
    return Draws(*(f[start:end] if isinstance(f, (torch.Tensor, tuple)) else f for f in draws))


def _apply(images: torch.Tensor, draws: Draws) -> torch.Tensor:
    if draws.mirror is not None:
        images = torch.where(draws.mirror.view(-1, 1, 1, 1), images.flip(-1), images)
    x = images.div(255)
    if draws.affine is not None:
        x = warp(x, draws.affine)
    if draws.colour is not None:
        x = colour_jitter(x, draws.colour_order, draws.colour, draws.hue)
    if draws.noise_seed is not None:
        x = add_noise(x, draws.noise_seed, draws.noise_sigma)
    if draws.erase is not None:
        x = erase(x, draws.erase)
    return x
