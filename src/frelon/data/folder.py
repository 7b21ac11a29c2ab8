"""A folder-per-class image set (a user's own "hornet"): scan, split by class, cache at training size."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from frelon.atomic import write_json
from frelon.errors import FrelonError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")


def scan(source: str | os.PathLike, classes: list[str]) -> dict[str, list[str]]:
    """Image paths per class, relative to `source`, sorted; refuses missing or empty class folders."""
    source = Path(source)
    if not source.is_dir():
        raise FrelonError(
            f"dataset source {source} is not a folder: point it at a folder with one subfolder "
            f"per class ({', '.join(classes)})"
        )
    found = {}
    for name in classes:
        folder = source / name
        if not folder.is_dir():
            raise FrelonError(
                f"dataset source {source} has no {name}/ subfolder: expected one subfolder per "
                f"class ({', '.join(f'{c}/' for c in classes)}); create it or fix the class names"
            )
        files = sorted(
            str(p.relative_to(source)) for p in folder.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise FrelonError(
                f"class folder {folder} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}): "
                f"add images to it or remove the class from the config"
            )
        found[name] = files
    return found


def stratified_split(files: dict[str, list[str]], val: float, test: float, seed: int) -> pd.DataFrame:
    """Split each class separately with the same fractions, so every split keeps the class ratio."""
    rows = []
    for label, (name, paths) in enumerate(files.items()):
        n = len(paths)
        n_test, n_val = round(n * test), round(n * val)
        if min(n_test, n_val, n - n_test - n_val) < 1:
            raise FrelonError(
                f"class {name!r} has {n} images: too few for a train/val/test split with "
                f"val={val}, test={test}; add images or change the split fractions"
            )
        order = list(paths)
        random.Random(f"{seed}:{name}").shuffle(order)
        for i, path in enumerate(order):
            split = "test" if i < n_test else "val" if i < n_test + n_val else "train"
            rows.append({"path": path, "label": label, "class": name, "split": split})
    return pd.DataFrame(rows).sort_values(["split", "label", "path"], ignore_index=True)


def load_square(path: str | os.PathLike, size: int, resize: int | None = None) -> np.ndarray:
    """RGB image, EXIF-rotated, shorter side resized to `resize` (default `size`), then the centre
    `size` x `size` crop: uint8 (3, size, size)."""
    resize = resize or size
    if resize < size:
        raise FrelonError(f"resize {resize} is smaller than the crop {size}; set resize >= image_size")
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        w, h = im.size
        scale = resize / min(w, h)
        im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy()


def prepare(source: str | os.PathLike, classes: list[str], val: float, test: float,
            image_size: int, seed: int, out_dir: str | os.PathLike, resize: int | None = None) -> pd.DataFrame:
    """Scan, split and cache a folder dataset into `out_dir` (manifest.csv, {split}.pt, report.json)."""
    import torch  # here, not at the top: the Snakefile imports `scan` to check folders at start-up

    source, out_dir = Path(source), Path(out_dir)
    manifest = stratified_split(scan(source, classes), val, test, seed)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        manifest.to_csv(work / "manifest.csv", index=False)
        for split in SPLITS:
            part = manifest[manifest.split == split]
            images = np.stack([load_square(source / p, image_size, resize) for p in part.path])
            torch.save({
                "images": torch.from_numpy(images),
                "labels": torch.tensor(part.label.to_numpy(), dtype=torch.int64),
                "paths": list(part.path),
                "classes": list(classes),
                "resize": resize or image_size,
                "crop": image_size,
            }, work / f"{split}.pt")
        counts = manifest.groupby(["split", "class"]).size().unstack(fill_value=0)
        write_json(work / "report.json", {
            "source": str(source), "image_size": image_size, "resize": resize or image_size, "seed": seed,
            "counts": {split: {c: int(counts.loc[split, c]) for c in classes} for split in SPLITS},
        })
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(work, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return manifest
