"""Offline augmentation: seeded, augmented copies of a prepared train split, and a preview grid.

The course's list, with `torchvision.transforms.v2`: mirror, affine (rotation, translation,
scale), colour jitter, Gaussian noise and random erasing. Copy `k` of image `i` is drawn from a
generator seeded by (seed, i, k) alone, so the set is the same whatever the order or the machine.
The validation and test splits are copied unchanged: only training images are augmented, and the
copies of an image stay in the train split, so nothing leaks into evaluation.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from frelon.atomic import atomic_dir, write_json
from frelon.errors import FrelonError

DEFAULTS = {"multiplier": 4, "flip": 0.5, "degrees": 15.0, "translate": 0.1, "scale": [0.9, 1.1],
            "brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.05, "noise_sigma": 0.03,
            "erasing": 0.25}


def pipeline(options: dict):
    """The transform applied to one uint8 (3, H, W) image."""
    import torch
    from torchvision.transforms import v2

    o = {**DEFAULTS, **options}
    return v2.Compose([
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomHorizontalFlip(o["flip"]),
        v2.RandomAffine(degrees=o["degrees"], translate=(o["translate"], o["translate"]), scale=tuple(o["scale"])),
        v2.ColorJitter(o["brightness"], o["contrast"], o["saturation"], o["hue"]),
        v2.GaussianNoise(sigma=o["noise_sigma"]),
        v2.RandomErasing(p=o["erasing"]),
        v2.ToDtype(torch.uint8, scale=True),
    ])


def augment_split(prepared: str | os.PathLike, out_dir: str | os.PathLike, options: dict, seed: int) -> dict:
    """Write `out_dir` as a prepared dataset whose train split holds each training image and
    `multiplier - 1` augmented copies of it; val and test are copied; plus preview.png."""
    import torch

    from frelon.data.dataset import sample_seed

    prepared, out_dir = Path(prepared), Path(out_dir)
    if not (prepared / "train.pt").exists():
        raise FrelonError(f"{prepared} has no train.pt: prepare the dataset first (frelon prepare)")
    multiplier = int({**DEFAULTS, **options}["multiplier"])
    if multiplier < 1:
        raise FrelonError(f"augment multiplier {multiplier}: use 1 (no copies) or more")
    blob = torch.load(prepared / "train.pt", weights_only=True)
    transform = pipeline(options)
    images, labels, paths, origin = [], [], [], []
    for i, (image, label) in enumerate(zip(blob["images"], blob["labels"])):
        for copy in range(multiplier):
            if copy == 0:
                images.append(image)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(sample_seed(seed, i, copy))
                    images.append(transform(image))
            labels.append(label)
            paths.append(blob["paths"][i] + ("" if copy == 0 else f"#aug{copy}"))
            origin.append(i)
    stacked = torch.stack(images)
    with atomic_dir(out_dir) as work:
        torch.save({**blob, "images": stacked, "labels": torch.stack(labels), "paths": paths,
                    "origin": torch.tensor(origin)}, work / "train.pt")
        for name in ("val.pt", "test.pt", "manifest.csv"):
            shutil.copy2(prepared / name, work / name)
        report = {"source": str(prepared), "seed": seed, "multiplier": multiplier,
                  "options": {**DEFAULTS, **options}, "train_images": len(images),
                  "original_train_images": len(blob["labels"])}
        write_json(work / "report.json", report)
        preview(stacked, multiplier, work / "preview.png")
    return report


def preview(augmented, multiplier: int, out: Path, rows: int = 6) -> None:
    """A grid: each row an original image followed by its augmented copies."""
    from PIL import Image
    from torchvision.utils import make_grid

    n = min(rows, len(augmented) // multiplier)
    grid = make_grid(augmented[: n * multiplier], nrow=multiplier, padding=2, pad_value=255)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(out, format="PNG")
