"""`frelon detect`: a trained detector on your own images, with the preprocessing it was trained with."""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import torch
from PIL import UnidentifiedImageError
from torchvision.transforms.v2.functional import pil_to_tensor

from frelon.data.coco import CategoryIndex
from frelon.data.folder import IMAGE_EXTENSIONS
from frelon.data.images import load_rgb
from frelon.data.transforms import Letterbox, letterboxed
from frelon.errors import FrelonError
from frelon.tasks.detection.predictor import FixedSizePredictor
from frelon.tasks.detection.task import build_model, to_results
from frelon.train.checkpoints import load_trained

T = TypeVar("T")


def image_files(inputs: list[str | os.PathLike]) -> list[Path]:
    """The images named, and those inside the folders named (sorted), in the order given."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif item.is_file():
            files.append(item)
        else:
            raise FrelonError(f"{item} does not exist: name image files or folders of images")
    if not files:
        raise FrelonError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {', '.join(map(str, inputs))}")
    return files


def load_detector(checkpoint: str | os.PathLike) -> tuple[torch.nn.Module, dict, CategoryIndex]:
    """The trained CenterNet of a detection run's model.pt, its preprocessing and its classes."""
    state = load_trained(checkpoint, "detection")
    model = build_model(state["spec"]["model"], len(state["classes"]))
    model.load_state_dict(state["model"])
    return model.eval(), state["preprocessing"], CategoryIndex(state["classes"])


def _ahead(function: Callable[[Path], T], items: list[Path]) -> Iterator[T]:
    """`function(item)` for each item in order, the next item's computed on a thread while the caller uses
    this one's (one ahead: images are read while the device works on the previous one)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: deque[Future[T]] = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) > 1:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _read(path: Path, pre: dict) -> tuple[torch.Tensor, torch.Tensor, Letterbox]:
    """An image file as it is (uint8, for drawing), as the network's normalised (1, 3, S, S) input, and where
    it lies in that input."""
    try:  # a photo as its camera meant it: EXIF orientation applied, transparency on white
        picture = load_rgb(path)
    except (OSError, UnidentifiedImageError) as exc:
        raise FrelonError(f"{path} is not a readable image ({exc})") from None
    x, letterbox = letterboxed(picture, pre["input_size"])
    mean, std = torch.tensor(pre["mean"]).view(3, 1, 1), torch.tensor(pre["std"]).view(3, 1, 1)
    return pil_to_tensor(picture), ((x - mean) / std)[None], letterbox


def detect(checkpoint: str | os.PathLike, inputs: list[str | os.PathLike], flip_test: bool = False,
           min_score: float = 0.3, top_k: int = 100,
           device: str = "auto") -> list[tuple[Path, torch.Tensor, list[dict]]]:
    """(file, image, detections with class names) for every image; boxes in the image's own pixels.

    On a GPU each image is one replay of a CUDA graph of the whole detector (`FixedSizePredictor`: batch 1 is
    otherwise bound by kernel launches), while a thread reads and letterboxes the next image."""
    model, pre, categories = load_detector(checkpoint)
    target = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    files = image_files(inputs)
    # built (on a GPU: captured) before the reading thread starts, so that the capture runs alone
    predictor = FixedSizePredictor(model.to(target), pre["input_size"], flip_test, top_k)
    found = []
    for image_id, (path, (image, x, letterbox)) in enumerate(
            zip(files, _ahead(partial(_read, pre=pre), files)), start=1):
        boxes, scores, labels = predictor(x)
        results = [{"file_name": str(path), **r, "category": categories.name(r["category_id"])}
                   for r in to_results(boxes[0], scores[0], labels[0], image_id, letterbox, categories)
                   if r["score"] >= min_score]
        found.append((path, image, results))
    return found
