"""Seeded generators for the embedded demo, written in the layouts real data comes in.

The hornet set mimics the course's: `presence/` images show an insect with yellow and dark
bands on its abdomen, `absence/` images show distractors (plain insects, flowers, leaves) or
nothing. The source set is a multi-class set of shapes and textures on which the demo
pretrains the ResNet-18 that stands in for ImageNet weights.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw, ImageFilter

RGB = tuple[int, int, int]
YELLOW, DARK = (232, 190, 30), (35, 25, 15)


def _jitter(rng: random.Random, colour: RGB, amount: int = 25) -> RGB:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)


def background(rng: random.Random, size: int) -> Image.Image:
    """A blurred field of soft blobs in foliage, soil or sky tones."""
    base = rng.choice([(70, 120, 50), (120, 95, 60), (120, 160, 200), (150, 150, 120)])
    img = Image.new("RGB", (size, size), _jitter(rng, base, 30))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(4, 9)):
        x, y, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(size / 10, size / 3)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=_jitter(rng, base, 50))
    return img.filter(ImageFilter.GaussianBlur(size / 40))


def _insect(rng: random.Random, length: int, bands: tuple[RGB, RGB] | None) -> Image.Image:
    """An insect seen from above on a transparent canvas, abdomen banded with `bands` if given."""
    canvas = Image.new("RGBA", (length, length), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    mid, w = length / 2, length * 0.16
    body = _jitter(rng, rng.choice([(60, 40, 25), (90, 70, 40), (30, 30, 30)]), 15)
    for side in (-1, 1):  # wings
        draw.ellipse((mid - w * 0.4, mid + side * w * 0.3 - w * 1.6 * (side < 0),
                      mid + length * 0.25, mid + side * w * 0.3 + w * 1.6 * (side > 0)),
                     fill=(220, 225, 235, 150))
    abdomen = (mid - length * 0.02, mid - w, mid + length * 0.42, mid + w)
    if bands is None:
        draw.ellipse(abdomen, fill=body + (255,))
    else:
        stripes = Image.new("RGBA", (length, length), (0, 0, 0, 0))
        sdraw = ImageDraw.Draw(stripes)
        step = length * rng.uniform(0.05, 0.07)
        x, k = abdomen[0], 0
        while x < abdomen[2]:
            sdraw.rectangle((x, 0, x + step, length), fill=bands[k % 2] + (255,))
            x, k = x + step, k + 1
        mask = Image.new("L", (length, length), 0)
        ImageDraw.Draw(mask).ellipse(abdomen, fill=255)
        canvas.paste(stripes, (0, 0), mask)
    draw.ellipse((mid - length * 0.2, mid - w * 0.8, mid + length * 0.02, mid + w * 0.8), fill=body + (255,))
    draw.ellipse((mid - length * 0.33, mid - w * 0.7, mid - length * 0.17, mid + w * 0.7), fill=DARK + (255,))
    return canvas


def _flower(rng: random.Random, length: int) -> Image.Image:
    canvas = Image.new("RGBA", (length, length), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    petal = _jitter(rng, rng.choice([YELLOW, (240, 240, 240), (200, 80, 160)]))
    mid, r = length / 2, length * 0.18
    for k in range(rng.randint(5, 8)):
        a = 2 * math.pi * k / 8 + rng.uniform(-0.2, 0.2)
        cx, cy = mid + math.cos(a) * r * 1.3, mid + math.sin(a) * r * 1.3
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=petal + (255,))
    draw.ellipse((mid - r * 0.8, mid - r * 0.8, mid + r * 0.8, mid + r * 0.8), fill=_jitter(rng, (120, 80, 20)) + (255,))
    return canvas


def _leaf(rng: random.Random, length: int) -> Image.Image:
    canvas = Image.new("RGBA", (length, length), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    colour = _jitter(rng, rng.choice([(50, 140, 40), (160, 140, 40), (110, 70, 30)]))
    draw.ellipse((length * 0.1, length * 0.35, length * 0.9, length * 0.65), fill=colour + (255,))
    draw.line((length * 0.1, length / 2, length * 0.9, length / 2), fill=_jitter(rng, colour, 40) + (255,), width=2)
    return canvas


def _texture(rng: random.Random, length: int, rings: bool) -> Image.Image:
    canvas = Image.new("RGBA", (length, length), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    a, b = _jitter(rng, (200, 200, 200), 55), _jitter(rng, (50, 50, 50), 50)
    step = length / rng.randint(6, 10)
    for k in range(int(length / step)):
        colour = (a if k % 2 else b) + (255,)
        if rings:
            r = length / 2 - k * step / 2
            draw.ellipse((length / 2 - r, length / 2 - r, length / 2 + r, length / 2 + r), fill=colour)
        else:
            draw.rectangle((k * step, length * 0.2, (k + 1) * step, length * 0.8), fill=colour)
    return canvas


def _place(rng: random.Random, img: Image.Image, sprite: Image.Image) -> None:
    """Paste `sprite` onto `img` at a random angle and position, keeping most of it in frame."""
    sprite = sprite.rotate(rng.uniform(0, 360), resample=Image.Resampling.BILINEAR, expand=False)
    room = img.width - sprite.width
    x, y = rng.randint(min(0, room), max(0, room)), rng.randint(min(0, room), max(0, room))
    img.paste(sprite, (x, y), sprite)


def _scene(rng: random.Random, size: int, sprites: list[Callable[[int], Image.Image]]) -> Image.Image:
    img = background(rng, size)
    for make in sprites:
        _place(rng, img, make(int(size * rng.uniform(0.5, 0.8))))
    return img


def _random_bands(rng: random.Random) -> tuple[RGB, RGB]:
    return _jitter(rng, (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255)), 0), DARK


SOURCE_CLASSES: dict[str, Callable[[random.Random, int], Image.Image]] = {
    "banded_insect": lambda rng, n: _insect(rng, n, _random_bands(rng)),
    "plain_insect": lambda rng, n: _insect(rng, n, None),
    "flower": _flower,
    "leaf": _leaf,
    "stripes": lambda rng, n: _texture(rng, n, rings=False),
    "rings": lambda rng, n: _texture(rng, n, rings=True),
}


def _hornet_distractor(rng: random.Random) -> list[Callable[[int], Image.Image]]:
    kind = rng.choice(["plain_insect", "flower", "leaf", "leaf_and_flower", "empty"])
    return {
        "plain_insect": [lambda n: _insect(rng, n, None)],
        "flower": [lambda n: _flower(rng, n)],
        "leaf": [lambda n: _leaf(rng, n)],
        "leaf_and_flower": [lambda n: _leaf(rng, n), lambda n: _flower(rng, n)],
        "empty": [],
    }[kind]


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=92)


def generate_hornet(out: str | os.PathLike, presence: int, absence: int, size: int, seed: int) -> None:
    """Write `out/presence/*.jpg` (banded insects among distractors) and `out/absence/*.jpg`."""
    out = Path(out)
    rng = random.Random(f"hornet:{seed}")
    for i in range(presence):
        sprites = [lambda n: _insect(rng, n, (_jitter(rng, YELLOW), DARK))]
        if rng.random() < 0.3:
            sprites = _hornet_distractor(rng) + sprites
        _save(_scene(rng, size, sprites), out / "presence" / f"presence_{i:05d}.jpg")
    for i in range(absence):
        _save(_scene(rng, size, _hornet_distractor(rng)), out / "absence" / f"absence_{i:05d}.jpg")


def generate_source(out: str | os.PathLike, per_class: int, size: int, seed: int) -> list[str]:
    """Write one folder per source class, `per_class` images each; returns the class names."""
    out = Path(out)
    rng = random.Random(f"source:{seed}")
    for name, make in SOURCE_CLASSES.items():
        for i in range(per_class):
            img = _scene(rng, size, [lambda n: make(rng, n)])
            _save(img, out / name / f"{name}_{i:05d}.jpg")
    return list(SOURCE_CLASSES)
