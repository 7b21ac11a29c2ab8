"""A seeded hornet detection set in YOLO's layout, standing in for one you would label yourself.

Two classes that differ as the real ones do: `velutina` (the Asian hornet: a dark body with one
yellow-orange band near the tail, yellow legs, smoky wings) and `crabro` (the European hornet:
larger, a reddish-brown head and thorax, a yellow abdomen with several dark bands, brown legs).
Each image has 0-3 of them, not overlapping, at varied sizes (at least about a sixth of the
image's side) and angles, on gradients, blurred blobs, leaf litter or mottled soil, with a
flower or leaf now and then that is no hornet. A box is the insect's visible extent: legs,
wings and antennae included.

`OUT/data.yaml`, `OUT/images/{train,val}/*.jpg` and `OUT/labels/{train,val}/*.txt` (empty for
an image without hornets), as Ultralytics and Roboflow export them.
"""

from __future__ import annotations

import math
import os
import random

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFilter

from frelon.atomic import atomic_dir
from frelon.data.demo import _flower, _jitter, _leaf, background

CLASSES = ("velutina", "crabro")
OBJECTS = (0, 1, 1, 1, 2, 2, 2, 3, 3)  # objects in an image, drawn uniformly: about one image in nine empty
SUPERSAMPLE = 3  # sprites are drawn this many times larger, then reduced: smooth edges at a few pixels
ALPHA_EDGE = 64  # a sprite's pixel at least this opaque is part of the insect's box
LENGTHS = {"velutina": (0.30, 0.45), "crabro": (0.36, 0.55)}  # body length, fraction of the image's side


def _hornet(rng: random.Random, kind: str, length: int) -> Image.Image:
    """A hornet seen from above, head to the left, on a transparent canvas `length` wide (body length)."""
    s = length * SUPERSAMPLE
    canvas = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    mid = s / 2
    crabro = kind == "crabro"
    half = s * (0.14 if crabro else 0.12)  # half the body's width
    dark = _jitter(rng, (30, 24, 18), 10)
    thorax = _jitter(rng, (140, 62, 30), 15) if crabro else dark
    legs = _jitter(rng, (150, 75, 35), 15) if crabro else _jitter(rng, (235, 195, 40), 15)
    band = _jitter(rng, (235, 195, 35), 15) if crabro else _jitter(rng, (240, 160, 30), 15)
    width = max(1, round(s * 0.025))
    for k, x in enumerate((0.22, 0.30, 0.38)):  # three pairs of legs from the thorax, bent backwards
        for side in (-1, 1):
            knee = (s * (x + 0.02 * k), mid + side * half * 2.0)
            draw.line([(s * x, mid), knee, (s * (x + 0.08 + 0.04 * k), mid + side * half * 2.6)],
                      fill=legs + (255,), width=width, joint="curve")
    for side in (-1, 1):  # antennae
        draw.line([(s * 0.05, mid + side * half * 0.3), (s * 0.0, mid + side * half * 1.3)], fill=dark + (255,),
                  width=width)
    abdomen = (s * 0.38, mid - half * 1.15, s * 0.98, mid + half * 1.15)
    stripes = Image.new("RGBA", (s, s), dark + (255,))
    sdraw = ImageDraw.Draw(stripes)
    span = abdomen[2] - abdomen[0]
    if crabro:  # yellow, the front segment reddish-brown, dark bands at the front of each segment
        sdraw.rectangle((0, 0, s, s), fill=band + (255,))
        sdraw.rectangle((0, 0, abdomen[0] + span * 0.18, s), fill=thorax + (255,))
        for k in range(4):
            x = abdomen[0] + span * (0.18 + 0.19 * k)
            sdraw.rectangle((x, 0, x + span * 0.05, s), fill=dark + (255,))
    else:  # dark, faint brown seams, one broad yellow-orange band near the tail
        seam = _jitter(rng, (95, 60, 30), 10)
        for k in range(3):
            x = abdomen[0] + span * (0.2 + 0.15 * k)
            sdraw.rectangle((x, 0, x + span * 0.02, s), fill=seam + (255,))
        sdraw.rectangle((abdomen[0] + span * 0.66, 0, abdomen[0] + span * 0.84, s), fill=band + (255,))
    mask = Image.new("L", (s, s), 0)
    ImageDraw.Draw(mask).ellipse(abdomen, fill=255)
    canvas.paste(stripes, (0, 0), mask)
    draw.ellipse((s * 0.13, mid - half, s * 0.42, mid + half), fill=thorax + (255,))  # thorax
    face = _jitter(rng, (225, 175, 40), 15) if crabro else _jitter(rng, (200, 120, 35), 15)
    draw.ellipse((s * 0.02, mid - half * 0.85, s * 0.17, mid + half * 0.85), fill=(thorax if crabro else dark) + (255,))
    draw.ellipse((s * 0.02, mid - half * 0.45, s * 0.09, mid + half * 0.45), fill=face + (255,))
    wing = (95, 85, 70, 140) if not crabro else (205, 175, 120, 120)
    for side in (-1, 1):  # wings folded back over the abdomen
        wings = Image.new("RGBA", (s, s), (0, 0, 0, 0))
        ImageDraw.Draw(wings).ellipse((s * 0.30, mid + side * half * 0.9 - half * 0.6, s * 0.80,
                                       mid + side * half * 0.9 + half * 0.6), fill=wing)
        canvas = Image.alpha_composite(canvas, wings)
    return canvas.resize((length, length), Image.Resampling.LANCZOS)


def _gradient(rng: random.Random, size: int) -> Image.Image:
    """Two colours blended along a random direction, with a little grain."""
    a, b = (np.array(_jitter(rng, rng.choice(c), 30), dtype=np.float32)
            for c in ([(70, 120, 50), (150, 150, 120), (120, 160, 200)], [(200, 190, 150), (60, 80, 40), (90, 70, 50)]))
    angle = rng.uniform(0, 2 * math.pi)
    y, x = np.mgrid[0:size, 0:size] / max(1, size - 1)
    t = np.clip((x - 0.5) * math.cos(angle) + (y - 0.5) * math.sin(angle) + 0.5, 0, 1)[..., None]
    grain = np.random.default_rng(rng.getrandbits(32)).normal(0, 6, (size, size, 1))
    return Image.fromarray(np.clip(a * (1 - t) + b * t + grain, 0, 255).astype(np.uint8))


def _litter(rng: random.Random, size: int) -> Image.Image:
    """Leaf litter: many small leaf shapes in greens and browns, overlapping, slightly blurred."""
    img = Image.new("RGB", (size, size), _jitter(rng, (80, 70, 45), 20))
    for _ in range(rng.randint(25, 45)):
        colour = _jitter(rng, rng.choice([(70, 110, 40), (120, 100, 50), (90, 60, 30), (140, 130, 70)]), 20)
        n = int(size * rng.uniform(0.12, 0.3))
        leaf = Image.new("RGBA", (n, n), (0, 0, 0, 0))
        ImageDraw.Draw(leaf).ellipse((0, n * 0.3, n, n * 0.7), fill=colour + (255,))
        leaf = leaf.rotate(rng.uniform(0, 360), expand=True)
        img.paste(leaf, (rng.randint(-n // 2, size - n // 2), rng.randint(-n // 2, size - n // 2)), leaf)
    return img.filter(ImageFilter.GaussianBlur(size / 150))


def _soil(rng: random.Random, size: int) -> Image.Image:
    """Mottled ground or bark: coarse noise, enlarged smoothly, in one earthy or stony tone, with grain."""
    base = np.array(_jitter(rng, rng.choice([(110, 90, 60), (130, 130, 120), (80, 95, 60)]), 20), dtype=np.float32)
    noise = np.random.default_rng(rng.getrandbits(32))
    coarse = Image.fromarray(noise.integers(0, 256, (8, 8), dtype=np.uint8)).resize((size, size),
                                                                                   Image.Resampling.BICUBIC)
    shade = (np.asarray(coarse, dtype=np.float32)[..., None] / 255 - 0.5) * 70
    return Image.fromarray(np.clip(base + shade + noise.normal(0, 8, (size, size, 1)), 0, 255).astype(np.uint8))


BACKGROUNDS = (background, _gradient, _litter, _soil)


def _overlaps(box: tuple[int, int, int, int], boxes: list[tuple[int, int, int, int]]) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 <= b[2] and b[0] <= x1 and y0 <= b[3] and b[1] <= y1 for b in boxes)


def scene(rng: random.Random, size: int, attempts: int = 20) -> tuple[Image.Image, list[tuple[int, list[int]]]]:
    """An image and its hornets: (class index, box `[x0, y0, x1, y1]` in pixels, x1 and y1 exclusive)."""
    img = rng.choice(BACKGROUNDS)(rng, size).convert("RGB")
    if rng.random() < 0.3:  # a flower or leaf that is no hornet
        sprite = (_flower if rng.random() < 0.5 else _leaf)(rng, int(size * rng.uniform(0.25, 0.45)))
        sprite = sprite.rotate(rng.uniform(0, 360), expand=True)
        img.paste(sprite, (rng.randint(-sprite.width // 3, size - sprite.width * 2 // 3),
                           rng.randint(-sprite.height // 3, size - sprite.height * 2 // 3)), sprite)
    wanted, objects = rng.choice(OBJECTS), []
    for _ in range(wanted * attempts):
        if len(objects) == wanted:
            break
        label = rng.randrange(len(CLASSES))
        low, high = LENGTHS[CLASSES[label]]
        sprite = _hornet(rng, CLASSES[label], max(8, round(size * rng.uniform(low, high))))
        sprite = sprite.rotate(rng.uniform(0, 360), resample=Image.Resampling.BICUBIC, expand=True)
        extent = sprite.getchannel("A").point(lambda a: 255 if a >= ALPHA_EDGE else 0).getbbox()
        sprite = sprite.crop(extent)
        if sprite.width > size or sprite.height > size:
            continue
        x, y = rng.randint(0, size - sprite.width), rng.randint(0, size - sprite.height)
        box = (x, y, x + sprite.width, y + sprite.height)
        if _overlaps(box, [b for _, b in objects]):
            continue
        img.paste(sprite, (x, y), sprite)
        objects.append((label, list(box)))
    return img, objects


def yolo_lines(objects: list[tuple[int, list[int]]], size: int) -> str:
    """The label file's text: `class cx cy w h`, fractions of the side."""
    return "".join(f"{label} {(x0 + x1) / 2 / size:.6f} {(y0 + y1) / 2 / size:.6f} {(x1 - x0) / size:.6f} "
                   f"{(y1 - y0) / size:.6f}\n" for label, (x0, y0, x1, y1) in objects)


def generate(out: str | os.PathLike, images: int, size: int, seed: int, val: int | None = None) -> dict[str, int]:
    """Write the set into `out` (replacing it): `images` train images and `val` (default a quarter as many,
    at least 2) validation images of `size` x `size`; returns the images per split."""
    counts = {"train": images, "val": max(2, images // 4) if val is None else val}
    rng = random.Random(f"hornet-detection:{seed}")
    with atomic_dir(out) as work:
        for split, count in counts.items():
            (work / "images" / split).mkdir(parents=True)
            (work / "labels" / split).mkdir(parents=True)
            for i in range(count):
                img, objects = scene(rng, size)
                img.save(work / "images" / split / f"{split}_{i:05d}.jpg", quality=92)
                (work / "labels" / split / f"{split}_{i:05d}.txt").write_text(yolo_lines(objects, size))
        (work / "data.yaml").write_text(yaml.safe_dump(
            {"train": "images/train", "val": "images/val", "nc": len(CLASSES), "names": list(CLASSES)},
            sort_keys=False))
    return counts

