"""`frelon detect`: a trained detector on your own images, videos and folders of frames, with the preprocessing
it was trained with."""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import torch
from torchvision.transforms.v2.functional import pil_to_tensor

from frelon.data.coco import CategoryIndex
from frelon.data.folder import IMAGE_EXTENSIONS
from frelon.data.transforms import Letterbox, letterboxed
from frelon.errors import FrelonError
from frelon.tasks.detection.predictor import FixedSizePredictor
from frelon.tasks.detection.task import build_model, to_results
from frelon.tasks.detection.video import (DEFAULT_FPS, Frame, MinuteCounts, Source, annotated_video, check_table_path,
                                          frame_rate, frames, rows, sources, write_table)
from frelon.train.checkpoints import load_trained

T = TypeVar("T")
U = TypeVar("U")


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


def _ahead(function: Callable[[T], U], items: Iterable[T]) -> Iterator[U]:
    """`function(item)` for each item in order, the next item taken from `items` and computed on a thread while
    the caller uses this one's (one ahead: images are read, or a video's frames decoded, while the device works
    on the previous one). `items` is only advanced on that thread, one item at a time."""
    iterator = iter(items)
    end = object()

    def next_one():
        for item in iterator:
            return function(item)
        return end

    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending: Future = pool.submit(next_one)
            while (result := pending.result()) is not end:
                pending = pool.submit(next_one)
                yield result
    finally:  # a caller that stops early: close the source (a video file) once the thread is done with it
        if hasattr(iterator, "close"):
            iterator.close()


def _read(frame: Frame, pre: dict) -> tuple[Frame, torch.Tensor, torch.Tensor, Letterbox]:
    """A frame, its picture as it is (uint8, for drawing), as the network's normalised (1, 3, S, S) input, and
    where it lies in that input."""
    x, letterbox = letterboxed(frame.picture, pre["input_size"])
    mean, std = torch.tensor(pre["mean"]).view(3, 1, 1), torch.tensor(pre["std"]).view(3, 1, 1)
    return frame, pil_to_tensor(frame.picture), ((x - mean) / std)[None], letterbox


def _predictor(model: torch.nn.Module, pre: dict, flip_test: bool, top_k: int, device: str) -> FixedSizePredictor:
    """The detector at its input size on `device` (auto: the GPU if there is one). On a GPU each image is one
    replay of a CUDA graph of the whole detector: batch 1 is otherwise bound by kernel launches."""
    target = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    return FixedSizePredictor(model.to(target), pre["input_size"], flip_test, top_k)


def _detections(predictor: FixedSizePredictor, pre: dict, categories: CategoryIndex, pictures: Iterable[Frame],
                min_score: float) -> Iterator[tuple[Frame, torch.Tensor, list[dict]]]:
    """(frame, picture, detections scoring at least `min_score`, with class names) for each frame, in order;
    boxes in the frame's own pixels, `image_id` the frame's number from 1. A thread reads (or decodes) and
    letterboxes the next frame while the predictor works on this one; the predictor is built (on a GPU:
    captured) before, so that the capture runs alone."""
    for number, (frame, image, x, letterbox) in enumerate(_ahead(partial(_read, pre=pre), pictures), start=1):
        boxes, scores, labels = predictor(x)
        yield frame, image, [{**r, "category": categories.name(r["category_id"])}
                             for r in to_results(boxes[0], scores[0], labels[0], number, letterbox, categories)
                             if r["score"] >= min_score]


def detect(checkpoint: str | os.PathLike, inputs: list[str | os.PathLike], flip_test: bool = False,
           min_score: float = 0.3, top_k: int = 100,
           device: str = "auto") -> list[tuple[Path, torch.Tensor, list[dict]]]:
    """(file, image, detections with class names) for every image; boxes in the image's own pixels."""
    model, pre, categories = load_detector(checkpoint)
    files = image_files(inputs)
    predictor = _predictor(model, pre, flip_test, top_k, device)
    images = (next(frames(Source(path, "image"))) for path in files)  # advanced, so read, on the reading thread
    return [(frame.file, image, [{"file_name": str(frame.file), **d} for d in detections])
            for frame, image, detections in _detections(predictor, pre, categories, images, min_score)]


def detect_frames(checkpoint: str | os.PathLike, inputs: list[str | os.PathLike], out: str | os.PathLike,
                  counts: str | os.PathLike | None = None, draw: str | os.PathLike | None = None,
                  fps: float = DEFAULT_FPS, every: int = 1, flip_test: bool = False, min_score: float = 0.3,
                  top_k: int = 100, device: str = "auto",
                  report: Callable[[Source, int, dict[str, int]], None] | None = None) -> list[dict]:
    """Detections in every `every`-th frame of videos and folders of frames (a lone image: one frame), written
    to `out` (the per-frame table, .json or .csv) and `counts` (per source, minute and class); `draw` gets an
    annotated copy of each: DIR/<stem>.mp4 for a video, DIR/<folder>/<frame>.png for a folder's frames,
    DIR/<stem>.png for an image. Frames are decoded one at a time. `out` and `counts` are written atomically
    once all sources are done, an annotated video once its source is; none if it fails. `report(source,
    frames, detections per class)` is called after each source. Returns the table's records."""
    from frelon.report.detections import draw as draw_boxes
    from frelon.report.detections import save_grid

    check_table_path(out)
    if every < 1 or not fps > 0:
        raise FrelonError(f"--every {every} and --fps {fps}: --every takes a whole number of frames, 1 or more; "
                          f"--fps a frame rate above 0")
    found = sources(inputs)
    model, pre, categories = load_detector(checkpoint)
    predictor = _predictor(model, pre, flip_test, top_k, device)
    table, minutes = [], MinuteCounts(categories.names)
    current, n, per_class, write_frame = None, 0, {}, None

    def all_frames() -> Iterator[Frame]:  # a generator: closing it closes the video being decoded
        for source in found:
            yield from frames(source, fps, every)

    with contextlib.ExitStack() as open_video:
        for frame, image, detections in _detections(predictor, pre, categories, all_frames(), min_score):
            if frame.source is not current:
                open_video.close()  # the previous source's annotated video, complete
                if current is not None and report:
                    report(current, n, per_class)
                current, n, per_class, write_frame = frame.source, 0, dict.fromkeys(categories.names, 0), None
                if draw and current.kind == "video":
                    write_frame = open_video.enter_context(annotated_video(Path(draw) / f"{current.path.stem}.mp4",
                                                                           frame_rate(current.path) / every))
            n += 1
            table += rows(frame, detections)
            minutes.add(frame, detections)
            for d in detections:
                per_class[d["category"]] += 1
            if draw:
                drawn = draw_boxes(image, [{**d, "name": d["category"]} for d in detections], min_score=min_score)
                if write_frame is not None:
                    write_frame(drawn)
                elif current.kind == "frames":
                    save_grid([drawn], Path(draw) / current.path.name / f"{frame.file.stem}.png", columns=1)
                else:
                    save_grid([drawn], Path(draw) / f"{current.path.stem}.png", columns=1)
    if current is not None and report:
        report(current, n, per_class)
    write_table(out, table)
    if counts:
        minutes.write(counts)
    return table
