"""`frelon detect`: a trained detector on your own images, videos and folders of frames, with the preprocessing
it was trained with."""

from __future__ import annotations

import contextlib
import os
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import torch
from torchvision.transforms.v2.functional import pil_to_tensor

from frelon.data.coco import CategoryIndex
from frelon.data.folder import IMAGE_EXTENSIONS
from frelon.data.transforms import Letterbox, letterboxed
from frelon.errors import FrelonError, FrelonWarning
from frelon.tasks.detection.predictor import FixedSizePredictor
from frelon.tasks.detection.task import build_model, to_results
from frelon.tasks.detection.video import (DEFAULT_FPS, Frame, MinuteCounts, Source, annotated_video, check_table_path,
                                          drawing_path, frame_rate, frames, images_in, rows, save_picture, sources,
                                          write_table)
from frelon.tasks.trained import load_run, weights_error

T = TypeVar("T")
U = TypeVar("U")


SMALL = 4  # an image whose side (the one resized to the model's input) is under 1/SMALL of that input is warned of


def named_image_files(inputs: list[str | os.PathLike], recursive: bool = False) -> list[tuple[Path, Path]]:
    """(file, its name) for the images named and those inside the folders named (sorted; with `recursive`, in
    their subfolders too), in the order given. The name is the file's, with its path inside a named folder's
    subfolders: where --draw puts its drawing."""
    files: list[tuple[Path, Path]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += [(p, p.relative_to(item)) for p in images_in(item, recursive)]
        elif item.is_file():
            files.append((item, Path(item.name)))
        else:
            raise FrelonError(f"{item} does not exist: name image files or folders of images")
    if not files:
        raise FrelonError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {', '.join(map(str, inputs))}"
                          + ("" if recursive else " (their subfolders were not searched: --recursive searches them)"))
    return files


def image_files(inputs: list[str | os.PathLike], recursive: bool = False) -> list[Path]:
    """The images named, and those inside the folders named (sorted; with `recursive`, in their subfolders
    too), in the order given."""
    return [path for path, _ in named_image_files(inputs, recursive)]


def warn_if_small(name: str | os.PathLike, size: tuple[int, int], side: int, input_size: int) -> None:
    """A warning for an image far smaller than the model's input: its `side` (the one resized to the input)
    under a quarter of it. Enlarged that much, it holds little of the detail the model learnt from; the run
    goes on."""
    if side * SMALL < input_size:
        warnings.warn(f"{name} is {size[0]} x {size[1]} px, far smaller than the model's {input_size} px input: "
                      f"enlarged {input_size / side:.0f}x, it has little of the detail the model was trained on; "
                      f"give the full-size image, not a thumbnail", FrelonWarning, stacklevel=2)


def load_detector(checkpoint: str | os.PathLike,
                  state: dict | None = None) -> tuple[torch.nn.Module, dict, CategoryIndex]:
    """The trained CenterNet of a detection run's model.pt (`state`: what `load_run` read of it), its
    preprocessing and its classes."""
    state = state or load_run(checkpoint, "detection")
    try:
        model = build_model(state["spec"]["model"], len(state["classes"]))
        model.load_state_dict(state["model"])
        categories = CategoryIndex(state["classes"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise weights_error(checkpoint, exc) from None
    return model.eval(), state["preprocessing"], categories


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


def _read_or_skip(frame: Frame, pre: dict) -> tuple[Frame, torch.Tensor | None, torch.Tensor | None,
                                                      Letterbox | None]:
    """`_read`, or the frame alone where its image file could not be read."""
    return _read(frame, pre) if frame.picture is not None else (frame, None, None, None)


def _detections(predictor: FixedSizePredictor, pre: dict, categories: CategoryIndex, pictures: Iterable[Frame],
                min_score: float,
                unreadable: list[tuple[Path, str]] | None = None) -> Iterator[tuple[Frame, torch.Tensor, list[dict]]]:
    """(frame, picture, detections scoring at least `min_score`, with class names) for each frame, in order;
    boxes in the frame's own pixels, `image_id` the frame's number from 1. An image file that could not be
    read is skipped (its number too) and added to `unreadable` as (file, reason); a source far smaller than the
    model's input is warned of once. A thread reads (or decodes) and letterboxes the next frame while the
    predictor works on this one; the predictor is built (on a GPU: captured) before, so that the capture runs
    alone."""
    last = None  # the source last checked for size: its frames come one after another
    for number, (frame, image, x, letterbox) in enumerate(_ahead(partial(_read_or_skip, pre=pre), pictures),
                                                          start=1):
        if image is None:
            if unreadable is not None:
                unreadable.append((frame.file, frame.error))
            continue
        if frame.source is not last:  # letterboxed: the longer side is resized to the input's
            last = frame.source
            warn_if_small(frame.file or frame.source.path, frame.picture.size, max(frame.picture.size),
                          pre["input_size"])
        boxes, scores, labels = predictor(x)
        yield frame, image, [{**r, "category": categories.name(r["category_id"])}
                             for r in to_results(boxes[0], scores[0], labels[0], number, letterbox, categories)
                             if r["score"] >= min_score]


def detect(checkpoint: str | os.PathLike, inputs: list[str | os.PathLike], flip_test: bool = False,
           min_score: float = 0.3, top_k: int = 100, device: str = "auto", recursive: bool = False,
           draw: str | os.PathLike | None = None,
           unreadable: list[tuple[Path, str]] | None = None) -> list[tuple[Path, torch.Tensor, list[dict]]]:
    """(file, image, detections with class names) for every image that could be read; boxes in the image's own
    pixels. The others are skipped and added to `unreadable` as (file, reason); none readable is an error.
    `draw` gets each image with its boxes drawn, in its own format: DIR/<name>, with its path in the subfolders
    of a folder named (`recursive`)."""
    from frelon.report.detections import draw as draw_boxes

    model, pre, categories = load_detector(checkpoint)
    named = named_image_files(inputs, recursive)
    names = dict(named)
    predictor = _predictor(model, pre, flip_test, top_k, device)
    images = (next(frames(Source(path, "image"))) for path, _ in named)  # advanced, so read, on the reading thread
    skipped: list[tuple[Path, str]] = []
    found = []
    for frame, image, detections in _detections(predictor, pre, categories, images, min_score, skipped):
        found.append((frame.file, image, [{"file_name": str(frame.file), **d} for d in detections]))
        if draw:
            save_picture(draw_boxes(image, [{**d, "name": d["category"]} for d in detections], min_score=min_score),
                         drawing_path(draw, names[frame.file]))
    if not found:
        raise FrelonError(f"none of the {len(skipped)} files could be read as an image: {skipped[0][1]} "
                          f"({skipped[0][0]})")
    if unreadable is not None:
        unreadable += skipped
    return found


def detect_frames(checkpoint: str | os.PathLike, inputs: list[str | os.PathLike], out: str | os.PathLike,
                  counts: str | os.PathLike | None = None, draw: str | os.PathLike | None = None,
                  fps: float = DEFAULT_FPS, every: int = 1, flip_test: bool = False, min_score: float = 0.3,
                  top_k: int = 100, device: str = "auto", recursive: bool = False,
                  report: Callable[[Source, int, dict[str, int]], None] | None = None,
                  unreadable: list[tuple[Path, str]] | None = None) -> list[dict]:
    """Detections in every `every`-th frame of videos and folders of frames (a lone image: one frame), written
    to `out` (the per-frame table, .json or .csv) and `counts` (per source, minute and class); `draw` gets an
    annotated copy of each: DIR/<stem>.mp4 for a video, DIR/<folder>/<frame> for a folder's frames, DIR/<name>
    for an image (a frame or image in its own format). With `recursive`, each subfolder of a folder named that
    holds images is a sequence of its own (drawn in DIR/<folder>/<subfolder>/). A frame whose file cannot be
    read is skipped (no row, not counted) and added to `unreadable` as (file, reason); no frame read at all is
    an error. Frames are decoded one at a time. `out` and `counts` are written atomically once all sources are
    done, an annotated video once its source is; none if it fails. `report(source, frames, detections per
    class)` is called after each source. Returns the table's records."""
    from frelon.report.detections import draw as draw_boxes

    check_table_path(out)
    if every < 1 or not fps > 0:
        raise FrelonError(f"--every {every} and --fps {fps}: --every takes a whole number of frames, 1 or more; "
                          f"--fps a frame rate above 0")
    found = sources(inputs, recursive)
    model, pre, categories = load_detector(checkpoint)
    predictor = _predictor(model, pre, flip_test, top_k, device)
    table, minutes, skipped = [], MinuteCounts(categories.names), []
    current, n, per_class, write_frame = None, 0, {}, None

    def all_frames() -> Iterator[Frame]:  # a generator: closing it closes the video being decoded
        for source in found:
            yield from frames(source, fps, every)

    with contextlib.ExitStack() as open_video:
        for frame, image, detections in _detections(predictor, pre, categories, all_frames(), min_score, skipped):
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
                    save_picture(drawn, drawing_path(Path(draw) / current.name, frame.file.name))
                else:
                    save_picture(drawn, drawing_path(draw, current.path.name))
    if current is None and skipped:
        raise FrelonError(f"none of the {len(skipped)} files could be read as an image: {skipped[0][1]} "
                          f"({skipped[0][0]})")
    if current is not None and report:
        report(current, n, per_class)
    if unreadable is not None:
        unreadable += skipped
    write_table(out, table)
    if counts:
        minutes.write(counts)
    return table
