"""The training-time view of a prepared split: normalised tensors, optional online augmentation."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from frelon.data import batch_augment
from frelon.data.augment import online, sample_seed
from frelon.data.batch_augment import Draws
from frelon.errors import FrelonError


class Batch(tuple):
    """A batch a dataset built whole (`__getitems__`): `collate` passes it through as it is."""


class RawBatch(NamedTuple):
    """A training batch as it leaves the loader: uint8 images, each sample's augmentation parameters
    (`Draws`), labels, and the weights' mean and std. `finish`, on the device it has been moved to, makes
    the network's input: a quarter of the bytes of float32 cross the workers' shared memory and the
    host-to-GPU copy, and the augmentation and arithmetic run on the GPU (a NamedTuple: pinned memory
    and `engine.move` keep its type)."""
    images: torch.Tensor
    draws: Draws
    labels: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(augmented, normalised float images, labels): with mirror alone or nothing, bit-identical to
        the float batches `CachedSplit` makes on the host (tested)."""
        return batch_augment.apply(self.images, self.draws).sub_(self.mean).div_(self.std), self.labels


def loader_workers(setting: int | str, dataset, device: torch.device) -> int:
    """Loader worker processes for `train.workers` (a number, or `auto`). auto: none on the CPU (the
    training's threads use every core, and the per-sample work is small beside a CPU step); on a GPU,
    the rank's share of this process's CPUs less its own, at most what the dataset's host work can use
    (`host_workers`: none or a few for uint8 images, every one for decoding and warping JPEGs)."""
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return 0
    cpus = len(os.sched_getaffinity(0)) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return max(0, min(cpus - 1, getattr(dataset, "host_workers", cpus)))


def collate(data):
    """The DataLoader's collate for datasets that may build their batches whole: a `Batch` or a `RawBatch`
    as it is, a list of samples through torch's default_collate."""
    if isinstance(data, RawBatch):
        return data
    return tuple(data) if isinstance(data, Batch) else default_collate(data)


def _batch_tensor(shape: tuple[int, ...], dtype: torch.dtype, pin: bool = False) -> torch.Tensor:
    """An empty tensor for a batch; in a loader worker, in shared memory, as default_collate allocates
    it, so that handing it to the main process copies nothing. In the main process with `pin` (a batch
    bound for a GPU), in pinned memory: the loader's pinning then copies nothing, the copy to the GPU
    runs asynchronously, and CUDA's caching host allocator hands back the same blocks batch after batch
    (fresh memory would cost its page faults each time: 3.6 against 0.5 ms for 64 images at 224 px)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype, pin_memory=pin and torch.cuda.is_available())
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
    (seed, e, i) inside `fork_rng` (its noise from a generator seeded with (seed, e, i, 1), where the
    batch is finished), not from a process-wide stream: an image gets the same
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
        self.augment, options = online(augment, options)
        self.flip = options["flip"]
        # mirror alone draws one number a sample without torchvision (its import costs a run 2 s);
        # other transforms draw torchvision's parameters
        self.drawer = (batch_augment.Drawer(self.augment, options, *self.images.shape[-2:])
                       if set(self.augment) - {"mirror"} else None)
        self.seed = seed
        self.raw = raw  # batches as `RawBatch`, finished where the model is
        SharedEpoch.__init__(self)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def host_workers(self) -> int:
        """Loader workers that keep a GPU fed with this split's uint8 batches (`loader_workers`). With mirror
        alone or nothing, none: the main process gathers a batch straight into pinned memory (35,000
        images/s at 224 px on one core), where a worker's batch must cross in fresh shared memory, whose
        page faults cost it 3x that gather (2 workers: 11,000 images/s; measured on 2 cores). The draws of
        the other transforms, 0.02-0.1 ms a sample, take a few."""
        return 4 if self.drawer is not None else 0

    def draws(self, indices: list[int]) -> Draws:
        """This epoch's augmentation parameters of the samples `indices`."""
        if self.drawer is not None:
            return self.drawer.batch([sample_seed(self.seed, self.epoch, i) for i in indices],
                                     [sample_seed(self.seed, self.epoch, i, batch_augment.NOISE_KEY) for i in indices])
        mirror = torch.tensor([self._mirrored(i) for i in indices]) if self.augment else None
        return Draws(mirror, None, None, None, False, None, 0.0, None)

    def augmented(self, i: int) -> torch.Tensor:
        """Image i as float in [0, 1], augmented with this epoch's draws for it (the preview's view)."""
        return batch_augment.apply(self.images[i:i + 1], self.draws([i]))[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.augmented(i) - self.mean) / self.std, self.labels[i]

    def _mirrored(self, i: int) -> bool:
        """The mirror's draw for sample i this epoch: the first of the sample's seeded CPU generator, as
        `v2.RandomHorizontalFlip` makes it."""
        draws = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, i))
        return bool(torch.rand(1, generator=draws) < self.flip)

    def __getitems__(self, indices: list[int]) -> Batch | RawBatch:
        """A whole batch (what a DataLoader asks for; give it `collate`): the uint8 images gathered and
        each sample's draws. With `raw`, as they are (`RawBatch`, finished on the device); else finished
        here, in the loader worker. With no augmentation or mirror alone, the images are flipped, scaled
        and normalised straight into one batch tensor (in a worker's shared memory, so that handing it
        over copies nothing), with the arithmetic of `__getitem__` (bit-identical, tested)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        if self.raw:
            images = _batch_tensor((len(indices), *self.images.shape[1:]), torch.uint8, pin=True)
            torch.index_select(self.images, 0, index, out=images)
            return RawBatch(images, self.draws(indices), self.labels[index], self.mean, self.std)
        if self.drawer is not None:
            return Batch(RawBatch(self.images[index], self.draws(indices), self.labels[index], self.mean,
                                  self.std).finish())
        mirror = [bool(self.augment) and self._mirrored(i) for i in indices]
        out = _batch_tensor((len(indices), *self.images.shape[1:]), torch.float32)
        for k, (i, flip) in enumerate(zip(indices, mirror)):
            torch.div(self.images[i].flip(-1) if flip else self.images[i], 255, out=out[k])
        out.sub_(self.mean).div_(self.std)
        return Batch((out, self.labels[index]))
