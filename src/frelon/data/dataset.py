"""The training-time view of a prepared split: normalised tensors, optional online augmentation."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from frelon.data.augment import _Mirror, online, sample_seed
from frelon.errors import FrelonError


class Batch(tuple):
    """A batch a dataset built whole (`__getitems__`): `collate` passes it through as it is."""


class RawBatch(NamedTuple):
    """A training batch as it leaves the loader: uint8 images, which to mirror, labels, and the weights'
    mean and std. `finish`, on the device it has been moved to, makes the network's input: a quarter of
    the bytes of float32 cross the workers' shared memory and the host-to-GPU copy, and the arithmetic
    runs on the GPU (a NamedTuple: pinned memory and `engine.move` keep its type)."""
    images: torch.Tensor
    mirror: torch.Tensor
    labels: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised float images, labels): bit-identical to `CachedSplit`'s float batches (tested)."""
        images = torch.where(self.mirror.view(-1, 1, 1, 1), self.images.flip(-1), self.images)  # no host sync
        return images.div(255).sub_(self.mean).div_(self.std), self.labels


def collate(data):
    """The DataLoader's collate for datasets that may build their batches whole: a `Batch` or a `RawBatch`
    as it is, a list of samples through torch's default_collate."""
    if isinstance(data, RawBatch):
        return data
    return tuple(data) if isinstance(data, Batch) else default_collate(data)


def _batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An empty tensor for a batch; in a loader worker, in shared memory, as default_collate allocates
    it, so that handing it to the main process copies nothing."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(math.prod(shape))
    return torch.empty(0, dtype=dtype).new(storage).view(shape)


class SharedEpoch:
    """A dataset's `epoch`, the key of its draws, in shared memory: the engine keeps its loader workers
    from epoch to epoch (`persistent_workers`), and they see what `set_epoch` writes in the main process."""

    def __init__(self) -> None:
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)


class CachedSplit(SharedEpoch, Dataset):
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
                 options: dict | None = None, seed: int = 0, raw: bool | None = False):
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
        self.raw = raw  # batches as `RawBatch`, finished where the model is (mirror alone or nothing)
        SharedEpoch.__init__(self)

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

    def _mirrored(self, i: int) -> bool:
        """_Mirror's draw for sample i this epoch: the first of the sample's seeded CPU generator, as
        `augmented` makes it."""
        draws = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, i))
        return bool(torch.rand(1, generator=draws) < self.transform.p)

    def __getitems__(self, indices: list[int]) -> Batch | RawBatch | list:
        """A whole batch (what a DataLoader asks for; give it `collate`). With no augmentation or mirror
        alone: with `raw`, the uint8 images gathered and the mirror draws (`RawBatch`, finished on the
        device); else the uint8 images flipped, scaled and normalised into one batch tensor with the same
        draws and arithmetic as `__getitem__` (bit-identical, tested), instead of a float image per sample
        stacked afterwards. Other augmentations go sample by sample."""
        if not (self.transform is None or isinstance(self.transform, _Mirror)):
            return [self[i] for i in indices]
        index = torch.as_tensor(indices, dtype=torch.long)
        mirror = [self.transform is not None and self._mirrored(i) for i in indices]
        if self.raw:
            images = _batch_tensor((len(indices), *self.images.shape[1:]), torch.uint8)
            torch.index_select(self.images, 0, index, out=images)
            return RawBatch(images, torch.tensor(mirror, dtype=torch.bool), self.labels[index], self.mean, self.std)
        out = _batch_tensor((len(indices), *self.images.shape[1:]), torch.float32)
        for k, (i, flip) in enumerate(zip(indices, mirror)):
            torch.div(self.images[i].flip(-1) if flip else self.images[i], 255, out=out[k])
        out.sub_(self.mean).div_(self.std)
        return Batch((out, self.labels[index]))
