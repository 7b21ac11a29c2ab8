"""`frelon export`: a trained model as one ONNX file for small devices (a trap's single-board computer, a
phone), which run it with onnxruntime and no PyTorch; the file is kept only once onnxruntime gives PyTorch's
outputs on the same images.

Exported with the torch.export-based exporter (`dynamo=True`, PyTorch's default since 2.9): the TorchScript
one is deprecated and cannot export the `dcn` decoder's deformable convolution. The batch axis is dynamic,
height and width are the checkpoint's input size. What a device program needs to feed the network and read
its outputs is written into the file's metadata (`metadata_props`: onnxruntime's
`session.get_modelmeta().custom_metadata_map`), each value a string, lists as JSON:

- `task`: classification or detection; `classes`: the class names, in output-channel order;
- `mean`, `std`, `input_size` (and `resize` for a classifier): the preprocessing it was trained with;
- `input`, `preprocessing`, `outputs`: the same in words.

The input `image` is float32 (batch, 3, H, W), RGB scaled to [0, 1], minus `mean`, divided by `std`. A
classifier's output `logits` is the raw scores (softmax gives the probabilities `frelon classify` reports).
A detector's outputs are CenterNet's heads at stride 4, not the decoding into boxes: `heatmap` (after the
sigmoid, a probability per class and cell, as `decode` takes it), `size` and `offset` (in output cells).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
import torch
from PIL import UnidentifiedImageError
from torch import nn

from frelon.atomic import atomic_path
from frelon.errors import FrelonError
from frelon.tasks.trained import load_run

TOLERANCE = 1e-4  # the largest absolute difference between onnxruntime's and PyTorch's outputs that passes
EXAMPLE_BATCH = 2  # the batch traced; torch.export would fix a batch axis of 1 as a constant
CHECK_BATCH = 3  # the default check's generated images: another batch size than the one traced


@dataclass
class Exportable:
    """A network with one image tensor in and a tuple out, and what a device needs to use it."""

    model: nn.Module
    outputs: list[str]
    size: int
    mean: list[float]
    std: list[float]
    metadata: dict[str, str]
    load_image: Callable[[Path | BinaryIO], torch.Tensor]  # an image file -> uint8 or [0, 1] (3, size, size) input

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float images -> the network's input, as in training."""
        x = pixels.float() / 255 if pixels.dtype == torch.uint8 else pixels.float()
        return (x - torch.tensor(self.mean).view(1, 3, 1, 1)) / torch.tensor(self.std).view(1, 3, 1, 1)


class Logits(nn.Module):
    """The classifier's output as a one-tensor tuple, like the detector's."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.model(image),)


class Heads(nn.Module):
    """CenterNet's three maps as a tuple, the heatmap through its sigmoid: what `decode` takes, so a device
    program only finds the peaks."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(image)
        return torch.sigmoid(out["heatmap"].float()), out["size"], out["offset"]


def _classifier(checkpoint: Path, state: dict | None = None) -> Exportable:
    from frelon.data.folder import load_square
    from frelon.tasks.classify import load_classifier

    model, pre, names = load_classifier(checkpoint, state)
    metadata = {
        "task": "classification", "classes": json.dumps(names), "input_size": str(pre["crop"]),
        "resize": str(pre["resize"]), "mean": json.dumps(pre["mean"]), "std": json.dumps(pre["std"]),
        "preprocessing": f"EXIF orientation applied, shorter side resized to {pre['resize']} px (bilinear), "
                         f"centre crop {pre['crop']} x {pre['crop']}",
        "outputs": "logits: float32 (batch, classes), raw scores; softmax over axis 1 gives the probabilities",
    }
    return Exportable(Logits(model).eval(), ["logits"], pre["crop"], pre["mean"], pre["std"], metadata,
                      lambda path: torch.from_numpy(load_square(path, pre["crop"], pre["resize"])))


def _detector(checkpoint: Path, state: dict | None = None) -> Exportable:
    from frelon.data.images import load_rgb
    from frelon.data.transforms import letterboxed
    from frelon.models.centernet import CenterNet
    from frelon.tasks.detection.inference import load_detector

    model, pre, categories = load_detector(checkpoint, state)
    size = pre["input_size"]

    def load_image(path: Path) -> torch.Tensor:  # as `frelon detect`: letterboxed, in [0, 1]
        return letterboxed(load_rgb(path), size)[0]

    metadata = {
        "task": "detection", "classes": json.dumps(categories.names), "input_size": str(size),
        "mean": json.dumps(pre["mean"]), "std": json.dumps(pre["std"]), "stride": str(CenterNet.stride),
        "preprocessing": f"EXIF orientation applied, longer side resized to {size} px (antialiased), centred "
                         f"and padded with black to {size} x {size}",
        "outputs": f"CenterNet's heads at stride {CenterNet.stride} ({size // CenterNet.stride} x "
                   f"{size // CenterNet.stride} cells), not decoded into boxes: heatmap (batch, classes, h, w) "
                   f"after the sigmoid, an object centre's probability per class and cell (its peaks, 3 x 3 local "
                   f"maxima, are the objects); size (batch, 2, h, w) width and height and offset (batch, 2, h, w) "
                   f"the centre's sub-cell x and y, both in cells (x {CenterNet.stride} for input pixels)",
    }
    return Exportable(Heads(model).eval(), ["heatmap", "size", "offset"], size, pre["mean"], pre["std"], metadata,
                      load_image)


def generated_images(n: int, size: int) -> torch.Tensor:
    """`n` uint8 images of random pixels, the same every time: inputs in the range photos have."""
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def _read_images(net: Exportable, inputs: list[str | os.PathLike], recursive: bool = False) -> torch.Tensor:
    """The check's images, as the checkpoint's preprocessing makes them (with `recursive`, those in the
    subfolders of a folder named too); a video gives a few of its frames."""
    from frelon.tasks.detection.inference import image_files
    from frelon.tasks.detection.video import check_pictures, is_video

    pixels = []
    images = [item for item in inputs if not is_video(item)]
    for path in image_files(images, recursive) if images else []:
        try:
            pixels.append(net.load_image(path))
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise FrelonError(f"{path} is not a readable image ({exc}): leave it out of --images") from None
    for video in (item for item in inputs if is_video(item)):
        pixels += [net.load_image(picture) for picture in check_pictures(video)]  # PNG in memory: as a file
    return torch.stack([p.float() / 255 if p.dtype == torch.uint8 else p for p in pixels])


def max_differences(onnx_file: str | os.PathLike, model: nn.Module, outputs: list[str],
                    x: torch.Tensor) -> dict[str, float]:
    """The largest absolute difference per output between onnxruntime (CPU) and PyTorch on the inputs `x`."""
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own error types: an operator or opset it lacks
        raise FrelonError(f"onnxruntime {onnxruntime.__version__} cannot load the exported model ({exc}); "
                          f"upgrade onnxruntime") from None
    got = session.run(outputs, {"image": x.numpy()})
    with torch.no_grad():
        expected = [t.float().numpy() for t in model(x)]
    differences = {}
    for name, a, b in zip(outputs, got, expected):
        if a.shape != b.shape:
            raise FrelonError(f"onnxruntime's {name} has shape {a.shape}, PyTorch's {b.shape}: the export is wrong; "
                              f"report it with the checkpoint's spec")
        differences[name] = float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0
    return differences


def export_onnx(checkpoint: str | os.PathLike, out: str | os.PathLike,
                images: list[str | os.PathLike] | None = None, tolerance: float = TOLERANCE,
                recursive: bool = False) -> dict:
    """Write `out` (.onnx, weights inside) from a run's model.pt, atomically, once onnxruntime agrees with
    PyTorch within `tolerance` on `images` (default: generated ones; `recursive`: the images in a folder's
    subfolders too); otherwise nothing new is left at `out`. Returns the task, the images checked and the max absolute difference per output."""
    checkpoint = Path(checkpoint)
    state = load_run(checkpoint)  # a classifier or a detector; anything else (a missing file, a folder) is named
    net = (_classifier if state["spec"]["task"] == "classification" else _detector)(checkpoint, state)
    x = net.normalise(_read_images(net, images, recursive) if images else generated_images(CHECK_BATCH, net.size))
    example = net.normalise(generated_images(EXAMPLE_BATCH, net.size))
    with atomic_path(out) as tmp:
        try:
            program = torch.onnx.export(net.model, (example,), dynamo=True, verbose=False, input_names=["image"],
                                        output_names=net.outputs,
                                        dynamic_shapes=({0: torch.export.Dim("batch")},))
        except torch.onnx.errors.OnnxExporterError as exc:
            raise FrelonError(f"PyTorch could not export {checkpoint} to ONNX: {str(exc).strip()[:500]}") from exc
        program.model.metadata_props.update(net.metadata)
        program.save(tmp, external_data=False)
        differences = max_differences(tmp, net.model, net.outputs, x)
        failed = {name: d for name, d in differences.items() if not d <= tolerance}  # NaN fails too
        if failed:
            listing = ", ".join(f"{name} by {d:.3g}" for name, d in failed.items())
            raise FrelonError(f"{out} was not written: onnxruntime's outputs differ from PyTorch's on {len(x)} "
                              f"images ({listing}; tolerance {tolerance:g}); if that difference is acceptable "
                              f"on the device, give a larger --tolerance")
    return {"task": net.metadata["task"], "images": len(x), "generated": not images, "differences": differences,
            "size": net.size, "classes": json.loads(net.metadata["classes"])}
