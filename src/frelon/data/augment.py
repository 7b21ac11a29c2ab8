"""Augmentation with `torchvision.transforms.v2`: offline (seeded, augmented copies of a prepared
train split, and a preview grid) and online (the engine's train split: the same transforms' draws,
applied to whole batches by `batch_augment`, on the GPU where there is one).

The course's list: mirror, affine (rotation, translation, scale), colour jitter, Gaussian noise
and random erasing, defined once in `transforms` so that the offline copies and the online study
draw from the same transforms; a subset is always applied in the order of `ORDER`, whatever the order it
is named in. Copy `k` of image `i` is drawn from a generator seeded by (seed, i, k) alone, so the
set is the same whatever the order or the machine. The validation and test splits are copied
unchanged: only training images are augmented, and the copies of an image stay in the train split,
so nothing leaks into evaluation.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from frelon.atomic import atomic_dir, torch_save, write_json
from frelon.errors import FrelonError


def sample_seed(*keys: int) -> int:
    """A 63-bit seed from (seed, epoch, index, ...): the draws of one sample, the same on every rank,
    worker or machine, and independent of the order samples are read in."""
    digest = hashlib.blake2b(",".join(map(str, keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1

DEFAULTS = {"multiplier": 4, "flip": 0.5, "degrees": 15.0, "translate": 0.1, "scale": [0.9, 1.1],
            "brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.05, "noise_sigma": 0.03,
            "erasing": 0.25}


# the order the transforms are applied in: the offline pipeline's from the start (its copies are
# unchanged), erasing last as torchvision advises, so noise never fills an erased patch
ORDER = ("mirror", "affine", "colour", "noise", "erasing")

# Online, erasing applies to half the images (Zhong et al. 2020's p, and mirror's): at the offline
# 0.25 the "erasing alone" arm of the study would leave three images in four untouched.
ONLINE_DEFAULTS = {**{key: value for key, value in DEFAULTS.items() if key != "multiplier"}, "erasing": 0.5}


def _check_names(names) -> None:
    if isinstance(names, str):
        raise FrelonError(f"augmentation {names!r}: give a list of names, e.g. [{names!r}]; [] for none")
    unknown = sorted(set(names) - set(ORDER))
    if unknown:
        raise FrelonError(f"augmentation {unknown}: unknown; choose from {list(ORDER)} ([] for none)")


def transforms(names, options: dict) -> list:
    """The named transforms of a float (3, H, W) image in [0, 1], in the order of `ORDER`;
    `options` holds every setting (DEFAULTS or ONLINE_DEFAULTS, overridden)."""
    from torchvision.transforms import v2

    _check_names(names)
    o = options
    build = {
        "mirror": lambda: v2.RandomHorizontalFlip(o["flip"]),
        "affine": lambda: v2.RandomAffine(degrees=o["degrees"], translate=(o["translate"], o["translate"]),
                                          scale=tuple(o["scale"])),
        "colour": lambda: v2.ColorJitter(o["brightness"], o["contrast"], o["saturation"], o["hue"]),
        "noise": lambda: v2.GaussianNoise(sigma=o["noise_sigma"]),
        "erasing": lambda: v2.RandomErasing(p=o["erasing"]),
    }
    return [build[name]() for name in ORDER if name in names]


def pipeline(options: dict):
    """The offline transform of one uint8 (3, H, W) image: every transform, uint8 out."""
    import torch
    from torchvision.transforms import v2

    return v2.Compose([v2.ToDtype(torch.float32, scale=True), *transforms(ORDER, {**DEFAULTS, **options}),
                       v2.ToDtype(torch.uint8, scale=True)])


def online(names, options: dict | None = None) -> tuple[list[str], dict]:
    """The online augmentation's transforms (named, in the order of `ORDER`) and settings, `options`
    overriding ONLINE_DEFAULTS; `batch_augment` applies them to whole batches."""
    unknown = sorted(set(options or {}) - set(ONLINE_DEFAULTS))
    if unknown:
        raise FrelonError(f"augment_options {unknown}: unknown; the settings are {sorted(ONLINE_DEFAULTS)}")
    _check_names(names)
    return [name for name in ORDER if name in names], {**ONLINE_DEFAULTS, **(options or {})}


def augment_split(prepared: str | os.PathLike, out_dir: str | os.PathLike, options: dict, seed: int) -> dict:
    """Write `out_dir` as a prepared dataset whose train split holds each training image and
    `multiplier - 1` augmented copies of it; val and test are copied; plus preview.png."""
    import torch

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
        torch_save({**blob, "images": stacked, "labels": torch.stack(labels), "paths": paths,
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
