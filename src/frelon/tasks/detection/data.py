"""A split of a prepared detection set (COCO JSON + images) as CenterNet trains on it and is scored on it.

`data/prepared/{voc,coco}/splits.json` says where each split's annotations and images are. Each
image is letterboxed into the square input (aspect ratio kept) and, for training, augmented and
turned into CenterNet's targets; for evaluation the sample is the image and its index, and
`letterbox(i)` maps predictions back to the image's own pixels.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2.functional import pil_to_tensor

from frelon.data.coco import training_targets
from frelon.data.dataset import SharedEpoch
from frelon.data.transforms import Letterbox, apply, detection_transform
from frelon.errors import FrelonError
from frelon.models.centernet import CenterNet
from frelon.tasks.detection.targets import build_targets


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


class DetectionSet(SharedEpoch, Dataset):
    """Images of one split, normalised with the weights' mean/std; targets for training."""

    def __init__(self, prepared: str | os.PathLike, split: str, preprocessing: dict, settings: dict,
                 train: bool = False, seed: int = 0):
        self.annotations, self.image_root = split_files(prepared, split)
        self.categories, images = training_targets(self.annotations)
        self.ids = sorted(images)
        self.images = [images[i] for i in self.ids]
        self.size = preprocessing["input_size"]
        self.mean = torch.tensor(preprocessing["mean"]).view(3, 1, 1)
        self.std = torch.tensor(preprocessing["std"]).view(3, 1, 1)
        self.settings, self.train, self.seed = settings, train, seed
        SharedEpoch.__init__(self)
        crowded = train and next((im for im in self.images if len(im["labels"]) > settings["max_objects"]), None)
        if crowded:
            raise FrelonError(f"{self.image_root / crowded['file_name']} has {len(crowded['labels'])} objects, more "
                              f"than detection.max_objects = {settings['max_objects']}; raise max_objects")

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def __len__(self) -> int:
        return len(self.images)

    def letterbox(self, i: int) -> Letterbox:
        return Letterbox(self.images[i]["height"], self.images[i]["width"], self.size)

    def read(self, i: int) -> torch.Tensor:
        """The image as uint8 RGB (3, H, W), checked against the size its annotations give."""
        return pil_to_tensor(self.read_pil(i))

    def read_pil(self, i: int) -> Image.Image:
        """The image as an RGB PIL image, checked against the size its annotations give."""
        info = self.images[i]
        path = self.image_root / info["file_name"]
        if not path.exists():
            raise FrelonError(f"{path} is missing ({self.annotations} lists it); extract the dataset completely "
                              f"and prepare it again")
        with Image.open(path) as opened:  # pixels as stored: the annotations refer to them, not to EXIF's turn
            image = opened.convert("RGB")
        if (image.height, image.width) != (info["height"], info["width"]):
            raise FrelonError(f"{path} is {image.width}x{image.height} but {self.annotations} says "
                              f"{info['width']}x{info['height']}; the image and its annotations do not match")
        return image

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict | int]:
        info = self.images[i]
        transform = detection_transform(self.letterbox(i), self.train, self.settings.get("augment"))
        image, target = apply(transform, self.read_pil(i), info["boxes"], info["labels"], self.seed, self.epoch, i)
        image = (image - self.mean) / self.std
        if not self.train:
            return image, i
        targets = build_targets(target["boxes"], target["labels"], self.num_classes, (self.size, self.size),
                                stride=CenterNet.stride, max_objects=self.settings["max_objects"],
                                min_overlap=self.settings["min_overlap"])
        targets["dropped"] = torch.tensor(target["dropped"])
        return image, targets


def collate(samples: list[tuple[torch.Tensor, dict | int]]) -> tuple[torch.Tensor, dict | list[int]]:
    """Stack images; stack each target tensor (training) or list the indices (evaluation)."""
    images = torch.stack([s[0] for s in samples])
    if isinstance(samples[0][1], dict):
        return images, {key: torch.stack([s[1][key] for s in samples]) for key in samples[0][1]}
    return images, [s[1] for s in samples]

