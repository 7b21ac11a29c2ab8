"""Checking the images of a user's folder: readable, upright, RGB, and duplicates found.

- Every file is decoded in full: unreadable, truncated or non-image files are listed.
- EXIF orientation is applied, so a phone photo taken sideways is stored upright.
- Grey, CMYK, palette and alpha images become RGB; transparent pixels are put on white.
- Exact duplicates (same pixels) and near duplicates (64-bit difference hashes within a few bits
  and the same mean colour: a resized, recompressed or slightly edited copy) are grouped, so that a split can keep a
  group together and no image leaks between train and test.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

HASH_SIZE = 8  # an 8x8 difference hash: 64 bits
NEAR_BITS = 4  # at most this many differing bits make two images near duplicates...
NEAR_COLOUR = 3.0  # ...and mean colours within this (of 255): flat images all share one dHash


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """The image as RGB, upright (EXIF orientation applied), transparency on white; decoded in full,
    so a truncated file raises here rather than later."""
    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return im.convert("RGB")


def difference_hash(image: Image.Image) -> int:
    """64-bit dHash: is each pixel brighter than its right neighbour, on a 9x8 grey thumbnail."""
    grey = np.asarray(image.convert("L").resize((HASH_SIZE + 1, HASH_SIZE), Image.Resampling.BILINEAR),
                      dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def mean_colour(image: Image.Image) -> tuple[float, float, float]:
    return tuple(np.asarray(image.resize((16, 16), Image.Resampling.BILINEAR), dtype=np.float64).mean((0, 1)))


@dataclass
class Checked:
    """The outcome of checking a folder's files."""

    good: list[str] = field(default_factory=list)          # relative paths, readable
    bad: dict[str, str] = field(default_factory=dict)      # relative path -> why it was refused
    converted: dict[str, int] = field(default_factory=dict)  # original mode -> count made RGB
    rotated: int = 0                                       # EXIF orientation applied
    groups: list[list[str]] = field(default_factory=list)  # duplicate groups (2 or more paths)
    exact: int = 0                                         # files that repeat another's pixels
    near: int = 0                                          # further files within NEAR_BITS of one


def check(root: str | os.PathLike, paths: list[str]) -> Checked:
    """Decode every file of `paths` (relative to `root`) and group duplicates among the good ones."""
    root = Path(root)
    out = Checked()
    digests: dict[str, str] = {}
    hashes: dict[str, tuple[int, tuple]] = {}
    for rel in paths:
        try:
            with Image.open(root / rel) as raw:
                mode = raw.mode
                orientation = raw.getexif().get(0x0112, 1)
            image = load_rgb(root / rel)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            out.bad[rel] = f"{type(exc).__name__}: {exc}"
            continue
        out.good.append(rel)
        if mode != "RGB":
            out.converted[mode] = out.converted.get(mode, 0) + 1
        out.rotated += orientation not in (0, 1)
        digests[rel] = hashlib.sha256(image.tobytes()).hexdigest()
        hashes[rel] = (difference_hash(image), mean_colour(image))
    out.groups, out.exact, out.near = _group(out.good, digests, hashes)
    return out


def _group(paths: list[str], digests: dict[str, str], hashes: dict[str, tuple[int, tuple]]
           ) -> tuple[list[list[str]], int, int]:
    """Union-find over 'same pixels' and 'hashes within NEAR_BITS, colours within NEAR_COLOUR'."""
    parent = {p: p for p in paths}

    def find(p: str) -> str:
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    exact = 0
    first_with: dict[str, str] = {}
    for p in paths:
        if digests[p] in first_with:
            parent[find(p)] = find(first_with[digests[p]])
            exact += 1
        else:
            first_with[digests[p]] = p
    unique = list(first_with.values())
    bits = np.array([hashes[p][0] for p in unique], dtype=np.uint64)
    colours = np.array([hashes[p][1] for p in unique], dtype=np.float64).reshape(-1, 3)
    near = 0
    for i, a in enumerate(unique[:-1]):  # each image against the later ones, vectorised
        differing = np.unpackbits((bits[i] ^ bits[i + 1:]).view(np.uint8).reshape(-1, 8), axis=1).sum(1)
        close = (differing <= NEAR_BITS) & (np.abs(colours[i + 1:] - colours[i]).max(1) <= NEAR_COLOUR)
        for j in np.flatnonzero(close):
            b = unique[i + 1 + j]
            if find(a) != find(b):
                parent[find(b)] = find(a)
                near += 1
    groups: dict[str, list[str]] = {}
    for p in paths:
        groups.setdefault(find(p), []).append(p)
    return [sorted(g) for g in groups.values() if len(g) > 1], exact, near
