"""A folder-per-class image set (a user's own "hornet"): scan, check, split by class, cache at training size.

Every file is checked (`frelon.data.images`): unreadable, truncated and non-image files fail the
step with a list, or are skipped and counted (`on_bad_image: skip`); images are made upright and
RGB. Exact and near duplicates are kept in one split, so no image leaks between train and test.
The split is stratified by class with a seed; `report.json` has the counts of all of this.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from frelon.atomic import atomic_dir, torch_save, write_json
from frelon.data import images as image_checks
from frelon.errors import FrelonError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")


def scan(source: str | os.PathLike, classes: list[str]) -> dict[str, list[str]]:
    """File paths per class, relative to `source`, sorted (every file but hidden ones: whether it is
    an image is checked when the set is prepared); refuses missing or empty class folders."""
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
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        )
        if not any(Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in files):
            raise FrelonError(
                f"class folder {folder} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}): "
                f"add images to it or remove the class from the config"
            )
        found[name] = files
    return found


def stratified_split(files: dict[str, list[str]], val: float, test: float, seed: int,
                     groups: list[list[str]] = ()) -> pd.DataFrame:
    """Split each class separately with the same fractions, so every split keeps the class ratio.
    The paths of a group (duplicates) go to the same split, that of the group's first member."""
    leader = {p: group[0] for group in groups for p in group}
    rows = []
    for label, (name, paths) in enumerate(files.items()):
        n = len(paths)
        n_test, n_val = round(n * test), round(n * val)
        if min(n_test, n_val, n - n_test - n_val) < 1:
            raise FrelonError(
                f"class {name!r} has {n} images: too few for a train/val/test split with "
                f"val={val}, test={test}; add images or change the split fractions"
            )
        units: dict[str, list[str]] = {}  # a path alone, or the members of its group in this class
        for path in paths:
            units.setdefault(leader.get(path, path), []).append(path)
        order = sorted(units)
        random.Random(f"{seed}:{name}").shuffle(order)
        placed = 0
        for key in order:
            split = "test" if placed < n_test else "val" if placed < n_test + n_val else "train"
            for path in units[key]:
                rows.append({"path": path, "label": label, "class": name, "split": split, "group": key})
            placed += len(units[key])
    table = pd.DataFrame(rows)
    # a group whose copies sit in several classes follows the split of its first member
    first = table.drop_duplicates("group").set_index("group").split
    table["split"] = table.group.map(first)
    counts = table.groupby(["class", "split"]).size().unstack(fill_value=0).reindex(columns=SPLITS, fill_value=0)
    empty = [(c, s) for c in counts.index for s in SPLITS if counts.loc[c, s] == 0]
    if empty:
        raise FrelonError(
            f"after keeping duplicates together, no {empty[0][0]!r} image is left for the {empty[0][1]} split "
            f"(counts {counts.to_dict('index')}); the class has too few distinct images: add some, or "
            f"remove the duplicates listed in a previous report"
        )
    return table.drop(columns="group").sort_values(["split", "label", "path"], ignore_index=True)


def load_square(path: str | os.PathLike, size: int, resize: int | None = None) -> np.ndarray:
    """RGB image, EXIF-rotated, shorter side resized to `resize` (default `size`), then the centre
    `size` x `size` crop: uint8 (3, size, size)."""
    resize = resize or size
    if resize < size:
        raise FrelonError(f"resize {resize} is smaller than the crop {size}; set resize >= image_size")
    im = image_checks.load_rgb(path)
    w, h = im.size
    scale = resize / min(w, h)
    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    im = im.crop((left, top, left + size, top + size))
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy()


def prepare(source: str | os.PathLike, classes: list[str], val: float, test: float,
            image_size: int, seed: int, out_dir: str | os.PathLike, resize: int | None = None,
            on_bad_image: str = "fail") -> pd.DataFrame:
    """Scan, check, split and cache a folder dataset into `out_dir` (manifest.csv, {split}.pt,
    report.json); nothing is written when it fails."""
    import torch  # here, not at the top: the Snakefile imports `scan` to check folders at start-up

    source, out_dir = Path(source), Path(out_dir)
    files = scan(source, classes)
    checked = image_checks.check(source, [p for paths in files.values() for p in paths])
    if checked.bad:
        listing = "; ".join(f"{p} ({why})" for p, why in list(checked.bad.items())[:10])
        more = f" and {len(checked.bad) - 10} more" if len(checked.bad) > 10 else ""
        if on_bad_image != "skip":
            raise FrelonError(f"{len(checked.bad)} file(s) in {source} are not readable images: {listing}{more}. "
                              f"Remove or replace them, or set on_bad_image: skip in the dataset's config "
                              f"to leave them out (they are then counted in report.json)")
        print(f"skipping {len(checked.bad)} unreadable file(s): {listing}{more}", flush=True)
        files = {name: [p for p in paths if p not in checked.bad] for name, paths in files.items()}
    manifest = stratified_split(files, val, test, seed, checked.groups)
    labels = manifest.set_index("path")["class"]
    conflicts = [g for g in checked.groups if labels[g].nunique() > 1]
    with atomic_dir(out_dir) as work:
        manifest.to_csv(work / "manifest.csv", index=False)
        for split in SPLITS:
            part = manifest[manifest.split == split]
            images = np.stack([load_square(source / p, image_size, resize) for p in part.path])
            torch_save({
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
            "skipped": {"count": len(checked.bad), "files": checked.bad},
            "converted_to_rgb": checked.converted,
            "exif_rotated": checked.rotated,
            "duplicates": {"groups": len(checked.groups), "exact": checked.exact, "near": checked.near,
                           "images_in_groups": sum(len(g) for g in checked.groups),
                           "groups_with_conflicting_classes": conflicts},
        })
    return manifest
