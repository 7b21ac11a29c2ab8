"""The report's view of online augmentation: the same training images as each setting of a study draws them."""

from __future__ import annotations

import os

from frelon.atomic import atomic_path
from frelon.data.augment import ORDER
from frelon.data.dataset import CachedSplit


def preview_online(split_path: str | os.PathLike, preprocessing: dict, names_list: list, out_png: str | os.PathLike,
                   n: int = 6, seed: int = 0, options: dict | None = None) -> None:
    """The report's augmentation preview: one row per setting in `names_list` (labelled "none",
    "all" or the names), the same `n` images, spread over the split, drawn as epoch 0 trains them."""
    import torch
    from PIL import Image, ImageDraw
    from torchvision.utils import make_grid

    rows = []
    for names in names_list:
        split = CachedSplit(split_path, preprocessing, names, options, seed)
        picks = torch.linspace(0, len(split) - 1, min(n, len(split))).round().long().unique()
        rows.append(torch.stack([split.augmented(int(i)) for i in picks]))
    grid = make_grid(torch.cat(rows), nrow=len(rows[0]), padding=2, pad_value=1.0)
    tiles = Image.fromarray(grid.mul(255).round().byte().permute(1, 2, 0).numpy())
    labels = ["none" if not names else "all" if set(names) == set(ORDER) else "+".join(x for x in ORDER if x in names)
              for names in names_list]
    measure = ImageDraw.Draw(tiles)
    label_width = 8 + max(int(measure.textlength(label)) for label in labels)
    tile_height = (tiles.height - 2) // len(rows)
    figure = Image.new("RGB", (label_width + tiles.width, tiles.height), "white")
    figure.paste(tiles, (label_width, 0))
    draw = ImageDraw.Draw(figure)
    for row, label in enumerate(labels):
        draw.text((4, 2 + row * tile_height + tile_height // 2), label, fill="black", anchor="lm")
    with atomic_path(out_png) as tmp:
        figure.save(tmp, format="PNG")
