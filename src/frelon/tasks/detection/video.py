"""`frelon detect` on videos and folders of frames: the frames, each with its index and its time, decoded one at
a time (a long video is never held in memory); the annotated video `--draw` writes; the per-frame table and the
per-minute counts.

Videos are read with PyAV (FFmpeg). A frame's time is its presentation timestamp (pts x the stream's time base)
from the start of the stream; a folder's frames, in name order, are `1 / fps` seconds apart.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from frelon.atomic import atomic_path, write_json, write_text
from frelon.data.folder import IMAGE_EXTENSIONS
from frelon.data.images import load_rgb
from frelon.errors import FrelonError

VIDEO_EXTENSIONS = frozenset({".avi", ".mkv", ".mov", ".mp4", ".webm"})
DEFAULT_FPS = 1.0  # a folder of frames without --fps: one a second, a timelapse trap's pace
CHECK_SECONDS = (0, 1, 2)  # `frelon export --images VIDEO`: the frames at these times check the export
ENCODERS = ("libx264", "mpeg4")  # --draw's video: H.264, or MPEG-4 part 2 where this FFmpeg build lacks libx264
COLUMNS = ["source", "frame", "time_s", "file", "category", "category_id", "score", "x", "y", "w", "h"]
COUNT_COLUMNS = ["source", "minute", "category", "frames", "detections", "max_per_frame"]
CONVERT = "convert it (ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4) or leave it out"
# What reading an image file can raise: a damaged, truncated or foreign file, a decompression bomb
UNREADABLE = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)
# --draw writes a drawing in its input's format (JPEG and WebP at quality 95); any other input gives a PNG
PICTURE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP", ".tif": "TIFF",
                   ".tiff": "TIFF"}
QUALITY = 95


def is_video(path: str | os.PathLike) -> bool:
    """A video file, by its suffix."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def as_frames(inputs: list[str | os.PathLike], out: str | os.PathLike, fps: float | None, every: int | None,
              counts: str | os.PathLike | None) -> bool:
    """Whether `frelon detect` reads its inputs as sequences of frames (a per-frame table): when a video is
    among them or --fps, --every, --counts or a .csv --out asks for it. Otherwise images and folders of images
    are separate photos, with COCO-style detections, as they always were."""
    return (any(is_video(p) for p in inputs) or fps is not None or every is not None or counts is not None
            or Path(out).suffix.lower() == ".csv")


@dataclass(frozen=True)
class Source:
    """An input read as frames: a `video`, a folder of `frames` (`files`, in name order) or one `image`. `name`:
    its place under --draw (a subfolder found by --recursive: its path from the folder named; else its name)."""

    path: Path
    kind: str
    files: tuple[Path, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.path.name)


@dataclass
class Frame:
    """A picture to run the detector on: its source, its index there (every frame counts, those `--every`
    skips too), its time in seconds from the source's start, its file (None for a video's) and its pixels; an
    image file that could not be read has no pixels and says why in `error` (it is skipped and listed)."""

    source: Source
    index: int
    time_s: float
    file: Path | None
    picture: Image.Image | None
    error: str | None = None


def _reason(exc: Exception) -> str:
    """FFmpeg's words for an error, without its errno and file name."""
    text = (getattr(exc, "strerror", None) or str(exc)).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


@contextlib.contextmanager
def _opened(path: Path) -> Iterator:
    """The video container of `path`, with at least one video stream; anything else is named."""
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise FrelonError(f"{path} is not a readable video ({_reason(exc)}): a damaged, truncated or partly "
                          f"copied file, or not a video; check that it plays, {CONVERT}") from None
    with container:
        if not container.streams.video:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
            raise FrelonError(f"{path} has no video stream ({kinds}): give a video file with pictures, or leave "
                              f"it out")
        yield container


def images_in(folder: Path, recursive: bool = False) -> list[Path]:
    """The image files in `folder` (and with `recursive`, in its subfolders, at any depth), in name order (a
    subfolder's where its name sorts)."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted((p for p in found if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
                  key=lambda p: p.relative_to(folder).parts)


def sources(inputs: list[str | os.PathLike], recursive: bool = False) -> list[Source]:
    """The inputs as sources of frames, in the order given, each checked before any detection runs: a video
    opens and has a video stream, a folder holds images. With `recursive`, each folder under a folder named
    that holds images is a sequence of frames of its own, after its parent's."""
    found = []
    for item in map(Path, inputs):
        if item.is_dir():
            by_folder: dict[Path, list[Path]] = defaultdict(list)
            for path in images_in(item, recursive):
                by_folder[path.parent].append(path)
            if not by_folder:
                raise FrelonError(f"{item} holds no frames ({', '.join(sorted(IMAGE_EXTENSIONS))} files"
                                  f"{', in it or its subfolders' if recursive else ''}): give a folder of frames "
                                  f"saved as images{'' if recursive else ' (--recursive: in its subfolders)'}, or "
                                  f"the video itself")
            for folder in sorted(by_folder, key=lambda f: f.relative_to(item).parts):
                found.append(Source(folder, "frames", tuple(by_folder[folder]),
                                    str(Path(item.name, folder.relative_to(item)))))
        elif item.is_file() and is_video(item):
            with _opened(item):
                pass
            found.append(Source(item, "video"))
        elif item.is_file():
            found.append(Source(item, "image"))
        else:
            raise FrelonError(f"{item} does not exist: name videos ({', '.join(sorted(VIDEO_EXTENSIONS))}), image "
                              f"files or folders of frames")
    return found


def _image_frame(source: Source, index: int, time_s: float, path: Path) -> Frame:
    """An image file's frame: RGB, upright, decoded in full. One that cannot be read has no picture and says
    why, to be skipped and listed: one damaged file does not stop a folder of thousands."""
    try:  # a photo as its camera meant it: EXIF orientation applied, transparency on white
        return Frame(source, index, time_s, path, load_rgb(path))
    except UNREADABLE as exc:
        return Frame(source, index, time_s, path, None, f"unreadable: {exc}")


def video_frames(path: Path, every: int = 1) -> Iterator[tuple[int, float, Image.Image]]:
    """(index, time in seconds, RGB picture) of every `every`-th frame of the video's first video stream, from
    frame 0, decoded one at a time. Every frame is decoded (a video's frames depend on the ones before); only
    those kept are converted to pictures."""
    import av

    with _opened(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame-threaded decoding: the same frames, sooner
        start = stream.start_time or 0
        rate = stream.average_rate or stream.guessed_rate
        index = -1
        try:
            for index, frame in enumerate(container.decode(stream)):
                if index % every:
                    continue
                if frame.pts is not None:
                    time_s = float((frame.pts - start) * stream.time_base)
                else:  # no timestamp: its place at the stream's frame rate
                    time_s = float(index / rate) if rate else 0.0
                yield index, round(time_s, 6), frame.to_image()
        except av.FFmpegError as exc:
            decoded = f"{index + 1} frame{'s' * (index != 0)}"
            raise FrelonError(f"{path}: decoding failed after {decoded} ({_reason(exc)}): the file is damaged; "
                              f"{CONVERT}") from None
        if index < 0:
            raise FrelonError(f"{path} has a video stream but no frame could be decoded: {CONVERT}")


def frames(source: Source, fps: float = DEFAULT_FPS, every: int = 1) -> Iterator[Frame]:
    """The source's frames one at a time, every `every`-th from frame 0; a folder's `1 / fps` seconds apart."""
    if source.kind == "video":
        for index, time_s, picture in video_frames(source.path, every):
            yield Frame(source, index, time_s, None, picture)
    elif source.kind == "frames":
        for index in range(0, len(source.files), every):
            yield _image_frame(source, index, round(index / fps, 6), source.files[index])
    else:
        yield _image_frame(source, 0, 0.0, source.path)


def drawing_path(folder: str | os.PathLike, name: str | os.PathLike) -> Path:
    """Where --draw writes the drawing of the image `name` (a path under `folder`): the same name, so the same
    format, for the formats `save_picture` writes; a PNG of the same stem for any other."""
    target = Path(folder) / name
    return target if target.suffix.lower() in PICTURE_FORMATS else target.with_suffix(".png")


def save_picture(image: torch.Tensor, target: str | os.PathLike) -> None:
    """A uint8 (3, H, W) picture as the image file `target`, in the format its suffix names (JPEG and WebP at
    quality 95: a drawing as sharp as its photo, at a photo's size), atomically."""
    picture = Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy()))
    kind = PICTURE_FORMATS.get(Path(target).suffix.lower(), "PNG")
    options = {"quality": QUALITY} if kind in ("JPEG", "WEBP") else {}
    with atomic_path(target) as tmp:
        picture.save(tmp, format=kind, **options)  # the format by name: tmp ends in .tmp


def check_pictures(path: str | os.PathLike) -> list[io.BytesIO]:
    """A few frames of a video (those at `CHECK_SECONDS`, fewer in a shorter video) as PNG files in memory,
    lossless: what an image file is to a loader that opens files."""
    pictures = []
    with contextlib.closing(video_frames(Path(path))) as decoded:
        for _, time_s, picture in decoded:
            if time_s >= CHECK_SECONDS[len(pictures)]:
                pictures.append(io.BytesIO())
                picture.save(pictures[-1], format="PNG")
                if len(pictures) == len(CHECK_SECONDS):
                    break
    return pictures


def frame_rate(path: Path) -> Fraction:
    """A video's average frame rate (25 where its header does not say)."""
    with _opened(path) as container:
        stream = container.streams.video[0]
        return Fraction(stream.average_rate or stream.guessed_rate or 25)


def encoder() -> str:
    """The first of `ENCODERS` this FFmpeg build has."""
    import av

    for name in ENCODERS:
        try:
            av.codec.Codec(name, "w")
            return name
        except (ValueError, av.FFmpegError):
            continue
    raise FrelonError(f"this PyAV's FFmpeg has none of the video encoders {', '.join(ENCODERS)}: reinstall PyAV "
                      f"from its wheels (pip install --force-reinstall av)")


@contextlib.contextmanager
def annotated_video(target: str | os.PathLike, rate: Fraction) -> Iterator[Callable[[torch.Tensor], None]]:
    """A function that appends a uint8 (3, H, W) picture to the .mp4 `target`, `rate` frames a second, written
    atomically: a run that stops leaves no video. yuv420p halves the colour resolution, so an odd width or
    height is padded with a black column or row."""
    import av

    codec = encoder()
    state = {"stream": None, "frames": 0}
    with atomic_path(target) as tmp, av.open(str(tmp), "w", format="mp4") as container:
        def write(image: torch.Tensor) -> None:
            image = F.pad(image, (0, image.shape[2] % 2, 0, image.shape[1] % 2))
            stream = state["stream"]
            if stream is None:
                stream = state["stream"] = container.add_stream(codec, rate=rate)
                stream.height, stream.width, stream.pix_fmt = image.shape[1], image.shape[2], "yuv420p"
                if codec == "libx264":
                    stream.options = {"preset": "veryfast"}  # a review copy: encoding keeps up with detection
                else:  # mpeg4's default of 200 kb/s blurs the labels
                    stream.bit_rate = max(1_000_000, int(image.shape[1] * image.shape[2] * rate / 2))
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy()), format="rgb24")
            frame.pts, frame.time_base = state["frames"], 1 / rate
            container.mux(stream.encode(frame))
            state["frames"] += 1

        yield write
        if state["stream"] is not None:
            container.mux(state["stream"].encode(None))  # the frames the encoder still holds


def rows(frame: Frame, detections: list[dict]) -> list[dict]:
    """A frame's detections as records of the per-frame table (boxes [x, y, w, h] in the frame's pixels)."""
    return [{"source": str(frame.source.path), "frame": frame.index, "time_s": frame.time_s,
             "file": str(frame.file) if frame.file is not None else None, "category": d["category"],
             "category_id": d["category_id"], "score": d["score"], "bbox": d["bbox"]} for d in detections]


def write_table(out: str | os.PathLike, records: list[dict]) -> None:
    """The per-frame table: a JSON list of records for .json, one CSV row per detection (bbox as x, y, w, h)
    for .csv; atomically."""
    if Path(out).suffix.lower() == ".csv":
        import pandas as pd

        flat = [{**{k: v for k, v in r.items() if k != "bbox"}, **dict(zip("xywh", r["bbox"]))} for r in records]
        write_text(out, pd.DataFrame(flat, columns=COLUMNS).to_csv(index=False))
    else:
        write_json(out, records)


def check_table_path(out: str | os.PathLike) -> None:
    if Path(out).suffix.lower() not in (".json", ".csv"):
        raise FrelonError(f"--out {out}: name a .json (a list of detections) or a .csv (a row per detection) file")


class MinuteCounts:
    """Per source, per minute of its time (minute = floor(time_s / 60)) and per class: the frames looked at, the
    detections in them (a sum over frames: an insect that stays is counted in each frame) and the most in any
    one frame (how many were there at once: the honest count of a trap's insects)."""

    def __init__(self, names: list[str]):
        self.names = names
        self.frames: dict[tuple[str, int], int] = defaultdict(int)
        self.detections: dict[tuple[str, int, str], int] = defaultdict(int)
        self.most: dict[tuple[str, int, str], int] = defaultdict(int)

    def add(self, frame: Frame, detections: list[dict]) -> None:
        key = (str(frame.source.path), math.floor(frame.time_s / 60))
        self.frames[key] += 1
        for name in self.names:
            n = sum(d["category"] == name for d in detections)
            self.detections[(*key, name)] += n
            self.most[(*key, name)] = max(self.most[(*key, name)], n)

    def records(self) -> list[dict]:
        """A record per source, minute with frames and class, in input, time and class order."""
        return [{"source": source, "minute": minute, "category": name, "frames": n,
                 "detections": self.detections[source, minute, name], "max_per_frame": self.most[source, minute, name]}
                for (source, minute), n in self.frames.items() for name in self.names]

    def write(self, out: str | os.PathLike) -> None:
        import pandas as pd

        write_text(out, pd.DataFrame(self.records(), columns=COUNT_COLUMNS).to_csv(index=False))
