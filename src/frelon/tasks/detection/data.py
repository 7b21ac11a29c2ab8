"""A split of a prepared detection set (COCO JSON + images) as CenterNet trains on it and is scored on it.

`data/prepared/{voc,coco}/splits.json` says where each split's annotations and images are. For
evaluation a sample is the image letterboxed into the square input (aspect ratio kept), normalised, and
its index; `letterbox(i)` maps predictions back to the image's own pixels. For training, the loader's
workers decode each image, warp it once (letterbox, zoom, shift, flip) and move its boxes alike; the
batch (`DetectionBatch`) then gets its colour jitter, normalisation and CenterNet's targets on the GPU
when the network trains on one (`raw`), else in the workers.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset
from torchvision.transforms.v2.functional import pil_to_tensor, to_dtype

from frelon.data.coco import training_targets
from frelon.data.dataset import Batch, SharedEpoch, _batch_tensor
from frelon.data.transforms import (COLOUR, Letterbox, Padded, apply, augmentation_options, detection_transform,
                                    draw_augmentation, jitter_colour, training_matrix, warp_boxes, warp_image)
from frelon.errors import FrelonError
from frelon.models.centernet import CenterNet
from frelon.tasks.detection.targets import build_targets_batch


# A JPEG is decoded at a reduction only when needed at a quarter of its size or less (a camera's photo at
# 512 px): its pixels then differ a little from a full decode's (2/255 on average), which evaluation uses;
# VOC and COCO images at 512, or the demo's at 64, are decoded whole, as evaluation decodes them.
DRAFT_SCALE = 0.25


def split_files(prepared: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """(annotation file, image folder) of a split of a prepared detection set."""
    listing = Path(prepared) / "splits.json"
    if not listing.exists():
        raise FrelonError(f"{listing} not found: {prepared} is not a prepared detection set; run "
                          f"`snakemake {prepared}` (frelon prepare-voc or prepare-coco) first")
    splits = json.loads(listing.read_text())
    if split not in splits:
        raise FrelonError(f"{listing} has no split {split!r} (it has {', '.join(splits)})")
    return Path(prepared) / splits[split]["annotations"], Path(splits[split]["images"])


class DetectionBatch(NamedTuple):
    """A training batch as it leaves the loader: the augmented images (uint8), their boxes (XYXY, input
    pixels; K slots, as many as the batch's most crowded image has objects) and labels, which slots hold an
    object, how many boxes the augmentation dropped, each image's colour factors (for the operations the
    settings switch on), and what `finish` needs. `finish`, on the device the engine has moved the batch to,
    makes the network's input and CenterNet's targets there: a quarter of the bytes of float images and no
    heatmaps cross the workers' shared memory and the host-to-GPU copy (a NamedTuple: pinned memory and
    `engine.move` keep its type)."""

    images: torch.Tensor  # (B, 3, S, S) uint8
    boxes: torch.Tensor  # (B, K, 4) float32
    labels: torch.Tensor  # (B, K) int64
    valid: torch.Tensor  # (B, K) bool
    dropped: torch.Tensor  # (B,) int64
    colour: dict[str, torch.Tensor]  # operation of COLOUR -> (B,) factors
    mean: torch.Tensor  # (3, 1, 1)
    std: torch.Tensor
    num_classes: int
    max_objects: int
    min_overlap: float

    def finish(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(normalised float images, targets): the colour jitter and normalisation of the whole batch, and
        its targets (`build_targets_batch`), with the dropped boxes that the loss statistics count."""
        images = to_dtype(self.images, torch.float32, scale=True)  # as the evaluation's ToDtype
        # a GPU takes the batch whole; a CPU an image at a time, in place: a batch of float images outgrows
        # its caches, and each colour step would stream it through memory again (1.7x the time at 512 px)
        step = len(images) if images.device.type != "cpu" else 1
        for start, part in zip(range(0, len(images), step), images.split(step)):
            jittered = jitter_colour(part, {name: f[start:start + step] for name, f in self.colour.items()})
            if jittered is not part:
                part.copy_(jittered)
            part.sub_(self.mean).div_(self.std)
        targets = build_targets_batch(self.boxes, self.labels, self.valid, self.num_classes,
                                      tuple(images.shape[-2:]), stride=CenterNet.stride,
                                      max_objects=self.max_objects, min_overlap=self.min_overlap)
        return images, {**targets, "dropped": self.dropped}


class DetectionSet(SharedEpoch, Dataset):
    """Images of one split: for evaluation normalised with the weights' mean/std, sample by sample; for
    training augmented, in whole batches (`__getitems__`: give the loader `collate`)."""

    def __init__(self, prepared: str | os.PathLike, split: str, preprocessing: dict, settings: dict,
                 train: bool = False, seed: int = 0, raw: bool | None = None):
        self.annotations, self.image_root = split_files(prepared, split)
        # crowd regions and VOC's difficult objects: targets in training as the settings say, never in scoring
        self.categories, images = training_targets(self.annotations,
                                                   settings.get("crowd", "train") if train else "drop")
        self.ids = sorted(images)
        self.images = [images[i] for i in self.ids]
        self.size = preprocessing["input_size"]
        self.mean = torch.tensor(preprocessing["mean"]).view(3, 1, 1)
        self.std = torch.tensor(preprocessing["std"]).view(3, 1, 1)
        self.settings, self.train, self.seed = settings, train, seed
        # training batches as `DetectionBatch`, finished where the model is; else finished in the loader's
        # workers, in parallel with training (None: the engine decides, by its device)
        self.raw = raw
        self.augment = augmentation_options(settings.get("augment"))
        SharedEpoch.__init__(self)
        self.keep_resolution = not train and settings.get("test_resolution", "letterbox") == "keep"
        self.left_out = self._limit_objects(settings["max_objects"], settings.get("too_many_objects", "keep_first"))

    def _limit_objects(self, max_objects: int, policy: str) -> dict[str, int]:
        """Images with more objects than `max_objects` train on their first `max_objects` (the official code's
        rule; `too_many_objects: keep_first`) or stop the run (`error`): the images and objects left out."""
        crowded = [im for im in self.images if len(im["labels"]) > max_objects] if self.train else []
        if crowded and policy == "error":
            worst = max(crowded, key=lambda im: len(im["labels"]))
            raise FrelonError(f"{len(crowded)} image(s) have more than detection.max_objects = {max_objects} objects, "
                              f"e.g. {self.image_root / worst['file_name']} with {len(worst['labels'])}; raise "
                              f"max_objects, or set detection.too_many_objects: keep_first to train on the first "
                              f"{max_objects} of each")
        objects = sum(len(im["labels"]) - max_objects for im in crowded)
        self.images = [{**im, "boxes": im["boxes"][:max_objects], "labels": im["labels"][:max_objects]}
                       if len(im["labels"]) > max_objects else im for im in self.images]
        return {"images": len(crowded), "objects": objects}

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def __len__(self) -> int:
        return len(self.images)

    def letterbox(self, i: int) -> Letterbox:
        """Where image i lies in its input: letterboxed into the square input (training, and evaluation by
        default), or at its own size padded to a multiple of 32 (evaluation with `test_resolution: keep`)."""
        info = self.images[i]
        if self.keep_resolution:
            return Padded(info["height"], info["width"])
        return Letterbox(info["height"], info["width"], self.size)

    def read(self, i: int) -> torch.Tensor:
        """The image as uint8 RGB (3, H, W), checked against the size its annotations give."""
        return pil_to_tensor(self.read_pil(i))

    def read_pil(self, i: int) -> Image.Image:
        """The image as an RGB PIL image, checked against the size its annotations give."""
        return self._decode(i)[0]

    def _decode(self, i: int, scale: float = 1.0) -> tuple[Image.Image, int]:
        """The image as an RGB PIL image, checked against the size its annotations give, and by how much it
        was reduced: a JPEG needed at `scale` <= DRAFT_SCALE of its size is decoded at 1/2, 1/4 or 1/8 of
        it, the largest of libjpeg's reductions that keeps at least `scale` (a photo many times the input's
        size then costs a fraction of its full decoding, and the reduction filters it properly)."""
        info = self.images[i]
        path = self.image_root / info["file_name"]
        if not path.exists():
            raise FrelonError(f"{path} is missing ({self.annotations} lists it); extract the dataset completely "
                              f"and prepare it again")
        with Image.open(path) as opened:  # pixels as stored: the annotations refer to them, not to EXIF's turn
            if (opened.height, opened.width) != (info["height"], info["width"]):
                raise FrelonError(f"{path} is {opened.width}x{opened.height} but {self.annotations} says "
                                  f"{info['width']}x{info['height']}; the image and its annotations do not match")
            drafted = scale <= DRAFT_SCALE and opened.draft("RGB", (math.ceil(opened.width * scale),
                                                            math.ceil(opened.height * scale)))
            reduction = round(info["width"] / drafted[1][2]) if drafted else 1
            return opened.convert("RGB"), reduction

    def augmented(self, i: int, out: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """Training image i with this epoch's draws for it: uint8 (3, S, S) (written into `out` if given),
        and its target: `boxes` (XYXY), `labels`, `dropped` (boxes the augmentation pushed out of the
        picture) and `colour` (the factors of COLOUR, applied on the batch)."""
        info = self.images[i]
        letterbox = self.letterbox(i)
        augmentation = draw_augmentation(self.augment, self.seed, self.epoch, i, letterbox)
        matrix = training_matrix(letterbox, augmentation)
        image, reduction = self._decode(i, scale=float(matrix[:, :2].abs().max()))
        to_decoded = torch.tensor([reduction, reduction, 1], dtype=matrix.dtype)  # decoded pixel -> image pixels
        warped = warp_image(image, matrix * to_decoded, self.size, out)
        boxes, labels, dropped = warp_boxes(info["boxes"], info["labels"], matrix, self.size)
        return warped, {"boxes": boxes, "labels": labels, "dropped": dropped,
                        "colour": torch.tensor(augmentation.colour, dtype=torch.float32)}

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict | int]:
        """Evaluation: (normalised float image, i). Training: `augmented(i)`."""
        if self.train:
            return self.augmented(i)
        image, _ = apply(detection_transform(self.letterbox(i)), self.read_pil(i), [], [], self.seed, self.epoch, i)
        return (image - self.mean) / self.std, i

    def __getitems__(self, indices: list[int]) -> DetectionBatch | Batch | list:
        """A loader's batch. For training a `DetectionBatch` (each image warped straight into the batch
        tensor, in shared memory in a loader worker), finished (normalised images and targets) unless `raw`;
        for evaluation the samples."""
        if not self.train:
            return [self[i] for i in indices]
        batch = self._batch(indices)
        return batch if self.raw else Batch(batch.finish())

    def _batch(self, indices: list[int]) -> DetectionBatch:
        """The training images `indices`, augmented, their boxes padded to the most any of them has."""
        images = _batch_tensor((len(indices), 3, self.size, self.size), torch.uint8)
        targets = [self.augmented(i, out=image)[1] for i, image in zip(indices, images)]
        counts = torch.tensor([len(t["labels"]) for t in targets])
        boxes = pad_sequence([t["boxes"] for t in targets], batch_first=True)
        labels = pad_sequence([t["labels"] for t in targets], batch_first=True)
        colour = torch.stack([t["colour"] for t in targets])
        return DetectionBatch(images, boxes, labels, torch.arange(labels.shape[1]) < counts[:, None],
                              torch.tensor([t["dropped"] for t in targets]),
                              {name: colour[:, k] for k, name in enumerate(COLOUR) if self.augment[name]},
                              self.mean, self.std, self.num_classes, self.settings["max_objects"],
                              self.settings["min_overlap"])


def collate(data: DetectionBatch | Batch | list[tuple[torch.Tensor, int]]) -> tuple:
    """The loader's collate: a training batch (built whole by `DetectionSet.__getitems__`) as it is;
    evaluation samples as the stacked images and the list of their indices."""
    if isinstance(data, DetectionBatch):
        return data
    if isinstance(data, Batch):
        return tuple(data)
    return torch.stack([s[0] for s in data]), [s[1] for s in data]
