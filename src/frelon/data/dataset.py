"""The training-time view of a prepared split: normalised tensors, optional online augmentation."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from frelon.data.augment import online
from frelon.errors import FrelonError


def sample_seed(*keys: int) -> int:
    """A 63-bit seed from (seed, epoch, index, ...): the draws of one sample, the same on every rank,
    worker or machine, and independent of the order samples are read in."""
    digest = hashlib.blake2b(",".join(map(str, keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class CachedSplit(Dataset):
    """Images of one prepared split (uint8 cache, resized and cropped as `preprocessing` says; checked),
    augmented online by the transforms named in `augment` (see augment.ORDER; `options` overrides
    augment.ONLINE_DEFAULTS), then normalised with the weights' mean/std.

    Every random draw of sample i at epoch e comes from the global generator reseeded with
    (seed, e, i) inside `fork_rng`, not from a process-wide stream: an image gets the same
    augmentation whichever rank or worker loads it, and a run resumed mid-epoch sees exactly the
    images the uninterrupted run saw. Mirror comes first and its draw is the first from that
    seed, so ["mirror"] flips exactly the images the earlier flip-only implementation flipped.
    """

    def __init__(self, path: str | os.PathLike, preprocessing: dict, augment: Sequence[str] = (),
                 options: dict | None = None, seed: int = 0):
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
        self.transform = online(augment, options)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def augmented(self, i: int) -> torch.Tensor:
        """Image i as float in [0, 1], augmented with this epoch's draws for it (the preview's view)."""
        x = self.images[i].float() / 255
        if self.transform is None:
            return x
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed would also reseed CUDA's, the training's
            torch.default_generator.manual_seed(sample_seed(self.seed, self.epoch, i))
            return self.transform(x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.augmented(i) - self.mean) / self.std, self.labels[i]
