"""`frelon classify`: a trained classifier on your own photos (a hornet trap's camera, a beekeeper's
pictures), with the preprocessing it was trained with; class probabilities per image."""

from __future__ import annotations

import os

import pandas as pd
import torch
from PIL import Image

from frelon.data.folder import load_square
from frelon.errors import FrelonError
from frelon.models.resnet import from_spec
from frelon.tasks.detection.inference import image_files, warn_if_small
from frelon.tasks.detection.video import UNREADABLE
from frelon.tasks.trained import load_run, weights_error


def load_classifier(checkpoint: str | os.PathLike,
                    state: dict | None = None) -> tuple[torch.nn.Module, dict, list[str]]:
    """The trained network of a classification run's model.pt (`state`: what `load_run` read of it), its
    preprocessing and class names."""
    state = state or load_run(checkpoint, "classification")
    m = state["spec"]["model"]
    try:
        with torch.device("meta"):  # no initialisation to throw away: every tensor comes from the checkpoint
            model = from_spec(m, m["num_classes"])
        model.load_state_dict(state["model"], assign=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise weights_error(checkpoint, exc) from None
    return model.eval(), state["preprocessing"], [c["name"] for c in state["classes"]]


def classify(checkpoint: str | os.PathLike, inputs: list[str | os.PathLike], device: str = "auto",
             batch_size: int = 32, recursive: bool = False) -> pd.DataFrame:
    """One row per image file, in the order given (folders: sorted; with `recursive`, their subfolders'
    images too): file, predicted class, its probability, one `p_<class>` column per class, and `error` for a
    file that could not be read (its probabilities left empty, never guessed). An image far smaller than the
    model's input is warned of."""
    model, pre, names = load_classifier(checkpoint)
    target = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    model.to(target)
    mean, std = torch.tensor(pre["mean"]).view(1, 3, 1, 1), torch.tensor(pre["std"]).view(1, 3, 1, 1)
    rows: list[dict] = []
    batch: list[tuple[int, torch.Tensor]] = []

    def flush() -> None:
        x = (torch.stack([t for _, t in batch]).float() / 255 - mean) / std
        with torch.no_grad():
            probabilities = model(x.to(target)).float().softmax(1).cpu()
        for (row, _), p in zip(batch, probabilities):
            best = int(p.argmax())
            rows[row].update(predicted=names[best], probability=float(p[best]),
                             **{f"p_{name}": float(v) for name, v in zip(names, p)})
        batch.clear()

    for path in image_files(inputs, recursive):
        rows.append({"file": str(path), "predicted": None, "probability": None, "error": None})
        try:  # as in training: EXIF orientation applied, shorter side resized, centre crop
            pixels = torch.from_numpy(load_square(path, pre["crop"], pre["resize"]))
            with Image.open(path) as image:  # its header only: the size before resizing
                size = image.size
        except UNREADABLE as exc:
            rows[-1]["error"] = f"unreadable: {exc}"
            continue
        warn_if_small(path, size, min(size), pre["crop"])  # the shorter side is resized to the input's
        batch.append((len(rows) - 1, pixels))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    table = pd.DataFrame(rows, columns=["file", "predicted", "probability", *(f"p_{n}" for n in names), "error"])
    if table["error"].notna().all():
        raise FrelonError(f"none of the {len(table)} files could be read as an image: "
                          f"{table['error'].iloc[0]} ({table['file'].iloc[0]})")
    return table
