"""The training-time view of a prepared split: normalised tensors, optional mirror."""

from __future__ import annotations

import hashlib
import os

import torch
from torch.utils.data import Dataset

from frelon.errors import FrelonError


def sample_seed(*keys: int) -> int:
    """A 63-bit seed from (seed, epoch, index, ...): the draws of one sample, the same on every rank,
    worker or machine, and independent of the order samples are read in."""
    digest = hashlib.blake2b(",".join(map(str, keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class CachedSplit(Dataset):
    """Images of one prepared split (uint8 cache, resized and cropped as `preprocessing` says; checked),
    normalised with the weights' mean/std.

    Random augmentation draws from a generator seeded by (seed, epoch, index), not from a
    process-wide stream: an image gets the same augmentation whichever rank or worker loads it,
    and a run resumed mid-epoch sees exactly the images the uninterrupted run saw.
    """

    def __init__(self, path: str | os.PathLike, preprocessing: dict, flip: bool = False, seed: int = 0):
        blob = torch.load(path, weights_only=True)
        cached = {key: blob.get(key) for key in ("resize", "crop")}
        wanted = {key: preprocessing[key] for key in ("resize", "crop")}
        if cached != wanted:
            raise FrelonError(f"{path} was prepared with {cached} but the model expects {wanted}; "
                              f"prepare the dataset again (snakemake reruns it when the config changed)")
        mean, std = preprocessing["mean"], preprocessing["std"]
        self.images: torch.Tensor = blob["images"]
        self.labels: torch.Tensor = blob["labels"]
        self.classes: list[str] = blob["classes"]
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.flip = flip
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = (self.images[i].float() / 255 - self.mean) / self.std
        if self.flip:
            g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, i))
            if torch.rand((), generator=g) < 0.5:
                x = x.flip(-1)
        return x, self.labels[i]
