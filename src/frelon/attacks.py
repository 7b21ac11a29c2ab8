"""Adversarial attacks on an image classifier: FGSM, PGD and a patch, on pixels in [0, 1].

Every attack works on pixels before the normalisation the network was trained with (`PixelModel`),
so eps bounds a change a camera could actually record (eps = 8/255: eight grey levels per channel).

- FGSM: Goodfellow, Shlens & Szegedy 2015, "Explaining and harnessing adversarial examples" (ICLR).
- PGD: Madry et al. 2018, "Towards deep learning models resistant to adversarial attacks" (ICLR).
- Patch: Brown et al. 2017, "Adversarial patch" (arXiv:1712.09665).

Accuracy under attack counts an image as robust only when the network classifies the clean image
and every perturbed image the attack tried correctly: the attacker keeps the first adversarial
example it finds (as RobustBench and AutoAttack score), so PGD stops early on a fooled image and
robust accuracy never exceeds clean accuracy. Every draw (random starts, patch positions, noise)
comes from a seeded `torch.Generator` on the CPU: the same numbers on every run and device.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from frelon.data.augment import sample_seed
from frelon.errors import FrelonError

ATTACKS = ("fgsm", "pgd")


class PixelModel(nn.Module):
    """pixels in [0, 1] -> (pixels - mean) / std -> the network: the attacks bound the change in
    pixels, not in normalised units (whose scale differs per channel)."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model((pixels - self.mean.to(pixels.dtype)) / self.std.to(pixels.dtype))


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """Float pixels in [0, 1] from uint8 images (/255) or float ones (checked, not rescaled)."""
    if images.dtype == torch.uint8:
        return images.float() / 255
    if not images.is_floating_point():
        raise FrelonError(f"images of dtype {images.dtype}: give uint8 (0-255) or float pixels in [0, 1]")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise FrelonError(f"float images range over [{float(images.min()):.3g}, {float(images.max()):.3g}]: "
                          f"give pixels in [0, 1] (divide uint8 images by 255), not normalised ones")
    return images


def project(adversarial: torch.Tensor, clean: torch.Tensor, eps: float) -> torch.Tensor:
    """The nearest point of the eps-ball around `clean` that is also an image: clip to
    [clean - eps, clean + eps], then to [0, 1] (exact, as both are boxes and clean lies in both)."""
    return torch.max(torch.min(adversarial, clean + eps), clean - eps).clamp(0, 1)


def _ascent(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, targeted: bool
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient of the attacker's objective at x and the logits there. Untargeted: raise the
    cross-entropy of the true label; targeted: lower that of the target. Summed over the batch, so an
    image's gradient does not depend on the batch it is in."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, labels, reduction="sum"), x)
    return (-grad if targeted else grad), logits.detach()


def _check_eps(eps: float) -> None:
    if not eps >= 0:
        raise FrelonError(f"eps {eps}: give a non-negative radius, in pixels of [0, 1] (e.g. 8/255)")


def fgsm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float,
         targeted: bool = False) -> torch.Tensor:
    """One step of eps * sign(gradient) from the clean pixels, clipped to [0, 1] (Goodfellow et al.).
    `model` takes pixels in [0, 1] (see PixelModel) and is in eval mode; targeted: `labels` are targets."""
    _check_eps(eps)
    grad, _ = _ascent(model, images, labels, targeted)
    return project(images + eps * grad.sign(), images, eps)


def pgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, steps: int = 10,
        step_size: float | None = None, targeted: bool = False, generator: torch.Generator | None = None,
        random_start: bool = True, callback: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Projected gradient descent (Madry et al.): a uniform random start in the eps-ball, then `steps`
    signed steps of `step_size` (default 2.5 * eps / steps), each iterate projected back to the ball
    and to [0, 1]. Returns the last iterate; `callback(step, iterate)` sees every one (step 0: the start).
    The start is drawn from `generator` (default: seeded 0) on the CPU, the same on any device."""
    _check_eps(eps)
    if steps < 0:
        raise FrelonError(f"pgd steps {steps}: give 0 (random start only) or more")
    alpha = 2.5 * eps / max(steps, 1) if step_size is None else step_size
    adversarial = images
    if random_start:
        generator = generator or torch.Generator().manual_seed(0)
        start = torch.rand(images.shape, generator=generator, dtype=images.dtype) * 2 - 1
        adversarial = project(images + eps * start.to(images.device), images, eps)
    if callback:
        callback(0, adversarial)
    for step in range(1, steps + 1):
        grad, _ = _ascent(model, adversarial, labels, targeted)
        adversarial = project(adversarial + alpha * grad.sign(), images, eps)
        if callback:
            callback(step, adversarial)
    return adversarial


def _pgd_until_fooled(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, steps: int,
                      alpha: float, start: torch.Tensor) -> torch.Tensor:
    """`pgd`, untargeted, that drops an image as soon as an iterate is misclassified: which images
    were fooled (bool per image). The iterates are those of `pgd` with the same start."""
    adversarial = project(images + eps * start, images, eps)
    fooled = torch.zeros(len(images), dtype=torch.bool, device=images.device)
    active = torch.arange(len(images), device=images.device)
    for step in range(steps + 1):
        x, y = adversarial[active], labels[active]
        if step < steps:
            grad, logits = _ascent(model, x, y, targeted=False)
        else:
            with torch.no_grad():
                logits = model(x)
        wrong = logits.argmax(1) != y
        fooled[active[wrong]] = True
        if step == steps or wrong.all():
            break
        keep = ~wrong
        active = active[keep]
        adversarial[active] = project(x[keep] + alpha * grad[keep].sign(), images[active], eps)
    return fooled


def eps_list(eps_255: Sequence[float]) -> list[float]:
    values = list(eps_255)
    if not values or any(not isinstance(e, (int, float)) or isinstance(e, bool) or e < 0 for e in values):
        raise FrelonError(f"eps {values}: give a list of non-negative radii in 1/255 units, e.g. [0, 1, 2, 4, 8]")
    return values


def sweep(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps_255: Sequence[float], steps: int,
           step_size: float | None, seed: int, batch_size: int, device: torch.device) -> tuple[list[dict], dict]:
    """The rows of `accuracy_under_attack` and, per image, whether it was classified correctly and
    which (attack, eps_255) fooled it. One gradient at the clean pixels serves FGSM at every eps."""
    eps_255 = eps_list(eps_255)
    n = len(labels)
    correct = torch.zeros(n, dtype=torch.bool)
    fooled = {(a, e): torch.zeros(n, dtype=torch.bool) for a in ATTACKS for e in eps_255}
    # a generator per eps: the starts at eps e are the same whichever other radii are listed
    starts = {e: torch.Generator().manual_seed(sample_seed(seed, round(e * 1000))) for e in eps_255}
    for begin in range(0, n, batch_size):
        part = slice(begin, begin + batch_size)
        x = to_pixels(images[part]).to(device)
        y = labels[part].to(device)
        grad, logits = _ascent(model, x, y, targeted=False)
        right = logits.argmax(1) == y
        correct[part] = right.cpu()
        for e in eps_255:
            draw = torch.rand(x.shape, generator=starts[e], dtype=x.dtype) * 2 - 1  # drawn for every image
            if e == 0 or not right.any():
                continue  # x itself: the clean prediction
            eps = e / 255
            idx = right.nonzero().squeeze(1)
            with torch.no_grad():
                wrong = model(project(x[idx] + eps * grad[idx].sign(), x[idx], eps)).argmax(1) != y[idx]
            fooled["fgsm", e][begin + idx[wrong].cpu()] = True
            alpha = 2.5 * eps / max(steps, 1) if step_size is None else step_size
            hit = _pgd_until_fooled(model, x[idx], y[idx], eps, steps, alpha, draw.to(device)[idx])
            fooled["pgd", e][begin + idx[hit].cpu()] = True
    rows = [{"attack": a, "eps_255": e, "eps": e / 255,
             "accuracy": float((correct & ~fooled[a, e]).sum()) / n if n else None, "n": n}
            for a in ATTACKS for e in eps_255]
    return rows, {"correct": correct, "fooled": fooled}


def accuracy_under_attack(model: nn.Module, mean: Sequence[float], std: Sequence[float], images: torch.Tensor,
                          labels: torch.Tensor, eps_255: Sequence[float] = (0, 1, 2, 4, 8), steps: int = 10,
                          step_size: float | None = None, seed: int = 0, batch_size: int = 64,
                          device: str | torch.device = "cpu") -> list[dict]:
    """Rows {attack, eps_255, eps, accuracy, n} for FGSM and PGD at each radius (in 1/255): the share
    of `images` (uint8 or float [0, 1], (N, 3, H, W)) classified correctly clean and under attack.
    `model` takes normalised input, as trained; eps 0 is the clean accuracy."""
    net = PixelModel(model, mean, std).to(device).eval()
    return sweep(net, images, labels, eps_255, steps, step_size, seed, batch_size, torch.device(device))[0]


# --- the adversarial patch -------------------------------------------------------------------------

def patch_side(area: float, height: int, width: int) -> int:
    """The side in pixels of a square patch covering `area` (a fraction) of an H x W image."""
    if not 0 < area <= 1:
        raise FrelonError(f"patch area {area}: give a fraction of the image in (0, 1], e.g. 0.05 for 5 %")
    side = max(1, round(math.sqrt(area * height * width)))
    if side > min(height, width):
        raise FrelonError(f"a patch of {area:.0%} of a {height}x{width} image is {side} px wide and does "
                          f"not fit: use a smaller area")
    return side


def random_positions(n: int, side: int, height: int, width: int, generator: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(tops, lefts) of `n` patches drawn uniformly among the positions that keep them inside the image."""
    tops = torch.randint(0, height - side + 1, (n,), generator=generator)
    lefts = torch.randint(0, width - side + 1, (n,), generator=generator)
    return tops, lefts


def paste(images: torch.Tensor, patch: torch.Tensor, top: int | Sequence[int] | torch.Tensor,
          left: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
    """A copy of the (N, C, H, W) batch with the (C, s, s) patch at (top, left), one position for all
    images or one per image; only the patch's own pixels change. Differentiable in the patch."""
    n, _, height, width = images.shape
    side = patch.shape[-1]
    tops, lefts = (torch.as_tensor(v).reshape(-1).tolist() for v in (top, left))
    if len(tops) not in (1, n) or len(lefts) not in (1, n):
        raise FrelonError(f"{len(tops)} tops and {len(lefts)} lefts for {n} images: give one position or one per image")
    tops, lefts = tops * (n // len(tops)), lefts * (n // len(lefts))
    out = images.clone()
    for i, (t, l) in enumerate(zip(tops, lefts)):
        if not (0 <= t <= height - side and 0 <= l <= width - side):
            raise FrelonError(f"a {side} px patch at (top {t}, left {l}) leaves the {height}x{width} image: "
                              f"give 0 <= top <= {height - side} and 0 <= left <= {width - side}")
        out[i, :, t:t + side, l:l + side] = patch.to(out.dtype)
    return out


def train_patch(model: nn.Module, images: torch.Tensor, target: int, side: int, steps: int = 100,
                lr: float = 0.05, batch: int = 16, generator: torch.Generator | None = None,
                device: str | torch.device = "cpu") -> torch.Tensor:
    """A (3, side, side) patch in [0, 1] that makes `model` (pixels in) say `target` wherever it is
    pasted (Brown et al.): Adam on the patch pixels, each step a random batch of `images` with the
    patch at a random position per image, clipped back to [0, 1] after each step."""
    if len(images) == 0:
        raise FrelonError("no training image to optimise the patch on: the train split has none of the "
                          "source class; check patch_source")
    generator = generator or torch.Generator().manual_seed(0)
    _, _, height, width = images.shape
    patch = torch.rand(3, side, side, generator=generator).to(device).requires_grad_(True)
    optimiser = torch.optim.Adam([patch], lr=lr)
    for _ in range(steps):
        pick = torch.randperm(len(images), generator=generator)[:batch]
        tops, lefts = random_positions(len(pick), side, height, width, generator)
        x = paste(to_pixels(images[pick]).to(device), patch, tops, lefts)
        loss = F.cross_entropy(model(x), torch.full((len(pick),), target, device=device))
        (patch.grad,) = torch.autograd.grad(loss, patch)
        optimiser.step()
        with torch.no_grad():
            patch.clamp_(0, 1)
    return patch.detach()


@torch.no_grad()
def patch_success(model: nn.Module, images: torch.Tensor, patch: torch.Tensor, target: int,
                  generator: torch.Generator, batch_size: int = 64, device: str | torch.device = "cpu"
                  ) -> tuple[float | None, float | None]:
    """(patch, noise): the share of `images` classified as `target` with the patch pasted at a random
    position, and with a uniform-noise patch of the same size at the same positions, the base rate of
    covering that much of the picture. None for no image."""
    n, _, height, width = images.shape
    if n == 0:
        return None, None
    side = patch.shape[-1]
    tops, lefts = random_positions(n, side, height, width, generator)
    noise = torch.rand(patch.shape, generator=generator).to(device)
    hits = torch.zeros(2)
    for begin in range(0, n, batch_size):
        part = slice(begin, begin + batch_size)
        x = to_pixels(images[part]).to(device)
        for k, p in enumerate((patch.to(device), noise)):
            hits[k] += (model(paste(x, p, tops[part], lefts[part])).argmax(1) == target).sum().cpu()
    return float(hits[0]) / n, float(hits[1]) / n


def patch_study(model: nn.Module, mean: Sequence[float], std: Sequence[float], train_images: torch.Tensor,
                test_images: torch.Tensor, target: int, areas: Sequence[float] = (0.01, 0.02, 0.05, 0.10),
                steps: int = 100, lr: float = 0.05, batch: int = 16, seed: int = 0, batch_size: int = 64,
                device: str | torch.device = "cpu") -> tuple[list[dict], dict[float, torch.Tensor]]:
    """One patch per area, optimised on `train_images` (of the source class) to make the network say
    `target`, scored on `test_images` (of the source class): rows {area, side_px, success,
    noise_success, n} and the patches by area. `model` takes normalised input, as trained."""
    net = PixelModel(model, mean, std).to(device).eval()
    _, _, height, width = test_images.shape
    rows, patches = [], {}
    for area in areas:
        side = patch_side(area, height, width)
        generator = torch.Generator().manual_seed(sample_seed(seed, round(area * 1e6)))
        patches[area] = train_patch(net, train_images, target, side, steps, lr, batch, generator, device)
        success, noise = patch_success(net, test_images, patches[area], target, generator, batch_size, device)
        rows.append({"area": area, "side_px": side, "success": success, "noise_success": noise,
                     "n": len(test_images)})
    return rows, patches
