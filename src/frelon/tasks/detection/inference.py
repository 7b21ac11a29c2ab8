"""`frelon detect`: a trained detector on your own images, with the preprocessing it was trained with."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import UnidentifiedImageError
from torchvision.transforms.v2.functional import pil_to_tensor

from frelon.data.coco import CategoryIndex
from frelon.data.folder import IMAGE_EXTENSIONS
from frelon.data.images import load_rgb
from frelon.data.transforms import letterboxed
from frelon.errors import FrelonError
from frelon.tasks.detection.task import build_model, predict, to_results
from frelon.train.checkpoints import load_trained


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


def detect(checkpoint: str | os.PathLike, inputs: list[str | os.PathLike], flip_test: bool = False,
           min_score: float = 0.3, top_k: int = 100,
           device: str = "auto") -> list[tuple[Path, torch.Tensor, list[dict]]]:
    """(file, image, detections with class names) for every image; boxes in the image's own pixels."""
    model, pre, categories = load_detector(checkpoint)
    target = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    model.to(target)
    mean, std = torch.tensor(pre["mean"]).view(3, 1, 1), torch.tensor(pre["std"]).view(3, 1, 1)
    found = []
    for image_id, path in enumerate(image_files(inputs), start=1):
        try:  # a photo as its camera meant it: EXIF orientation applied, transparency on white
            picture = load_rgb(path)
        except (OSError, UnidentifiedImageError) as exc:
            raise FrelonError(f"{path} is not a readable image ({exc})") from None
        image = pil_to_tensor(picture)
        x, letterbox = letterboxed(picture, pre["input_size"])
        boxes, scores, labels = predict(model, ((x - mean) / std)[None].to(target), flip_test, top_k)
        results = [{"file_name": str(path), **r, "category": categories.name(r["category_id"])}
                   for r in to_results(boxes[0], scores[0], labels[0], image_id, letterbox, categories)
                   if r["score"] >= min_score]
        found.append((path, image, results))
    return found
