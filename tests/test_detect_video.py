"""`frelon detect` on videos and folders of frames: each frame's index and time, the detections the same frames
give as images, the per-frame table (JSON, CSV), the per-minute counts, the annotated video, clear errors, and
`frelon export --images` with a video."""

import contextlib
import io
import json
import math
import threading
import time

import av
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from frelon.cli import main
from frelon.data.transforms import letterboxed
from frelon.errors import FrelonError
from frelon.models.centernet import CenterNet
from frelon.tasks import export
from frelon.tasks.detection import inference, video
from frelon.tasks.detection.inference import detect

SIZE = 64
PRE = {"input_size": SIZE, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
CLASSES = [{"id": 7, "name": "wasp"}, {"id": 3, "name": "hornet"}, {"id": 5, "name": "bee"}]
SPEC = {"arch": "resnet18", "weights": None, "norm": "batch", "decoder": "deconv", "head_only": False,
        "weights_path": None}
MIN_SCORE = "0.3"  # 4 to 8 a frame, of two classes


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small detector with distinct peaks, scores spread over (0, 0.5) and boxes of some size (an untrained
    one's have none)."""
    torch.manual_seed(0)
    net = CenterNet(3, decoder="deconv").train()
    with torch.no_grad():
        net.heatmap[-1].weight.normal_(std=10)
        net.size[-1].bias.fill_(4.0)
        net(torch.randn(2, 3, SIZE, SIZE))
    path = tmp_path_factory.mktemp("detector") / "model.pt"
    torch.save({"model": net.eval().state_dict(), "spec": {"task": "detection", "model": SPEC}, "classes": CLASSES,
                "preprocessing": PRE, "diverged": None}, path)
    return path


def _scene(i: int, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A noisy background with a coloured rectangle that moves right a few pixels each frame."""
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    left = (3 * i) % max(1, width - width // 4)
    pixels[height // 4: height // 2, left: left + width // 4] = (230, 160, 20)
    return pixels


def write_video(path, n: int, fps: int, width: int, height: int, codec: str = "libx264",
                pix_fmt: str = "yuv420p") -> None:
    rng = np.random.default_rng(n)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for i in range(n):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(_scene(i, width, height, rng), format="rgb24")))
        container.mux(stream.encode(None))


def decoded(path) -> list[Image.Image]:
    with av.open(str(path)) as container:
        return [frame.to_image() for frame in container.decode(video=0)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """64 x 48, 24 frames at 8 fps: 3 s."""
    path = tmp_path_factory.mktemp("videos") / "clip.mp4"
    write_video(path, 24, 8, 64, 48)
    return path


@pytest.fixture(scope="module")
def clip_frames(clip):
    """The clip's frames, decoded here, as PNG files (lossless): the same pictures as images."""
    folder = clip.parent / "clip_frames"
    folder.mkdir()
    for i, picture in enumerate(decoded(clip)):
        picture.save(folder / f"frame_{i:03d}.png")
    return folder


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _found(records: list[dict]) -> list[tuple]:
    return [(d["category"], d["category_id"], d["score"], d["bbox"]) for d in records]


def test_a_videos_frames_come_with_their_index_and_time(clip):
    assert [(i, t) for i, t, _ in video.video_frames(clip)] == [(i, i / 8) for i in range(24)]
    every = list(video.video_frames(clip, every=5))
    assert [(i, t) for i, t, _ in every] == [(0, 0.0), (5, 0.625), (10, 1.25), (15, 1.875), (20, 2.5)]
    assert every[0][2].size == (64, 48) and every[0][2].mode == "RGB"


def test_a_video_gives_the_detections_its_frames_give_as_images_in_json_and_csv(checkpoint, clip, clip_frames,
                                                                                 tmp_path):
    as_images = detect(checkpoint, [clip_frames], min_score=float(MIN_SCORE), device="cpu")
    assert len(as_images) == 24 and sum(len(found) for _, _, found in as_images) > 48

    code, out, err = _cli(["detect", checkpoint, clip, "--out", tmp_path / "d.json", "--min-score", MIN_SCORE,
                           "--device", "cpu"])
    assert code == 0, err
    assert f"{clip}: 24 frames, " in out
    table = json.loads((tmp_path / "d.json").read_text())
    assert {d["source"] for d in table} == {str(clip)} and {d["file"] for d in table} == {None}
    for i, (_, _, found) in enumerate(as_images):
        in_frame = [d for d in table if d["frame"] == i]
        assert _found(in_frame) == _found(found), i
        assert {d["time_s"] for d in in_frame} <= {i / 8}
    assert [d["frame"] for d in table] == sorted(d["frame"] for d in table)

    code, _, err = _cli(["detect", checkpoint, clip, "--out", tmp_path / "d.csv", "--every", "3",
                         "--min-score", MIN_SCORE, "--device", "cpu"])
    assert code == 0, err
    rows = pd.read_csv(tmp_path / "d.csv")
    assert list(rows.columns) == video.COLUMNS and rows["file"].isna().all()
    kept = [d for d in table if d["frame"] % 3 == 0]
    assert rows["frame"].tolist() == [d["frame"] for d in kept] and rows["time_s"].tolist() == [d["time_s"]
                                                                                              for d in kept]
    assert [(r.category, r.category_id, r.score, [r.x, r.y, r.w, r.h]) for r in rows.itertuples()] == _found(kept)


def test_a_folder_of_frames_is_a_sequence_at_the_given_frame_rate(checkpoint, clip, clip_frames, tmp_path):
    code, out, err = _cli(["detect", checkpoint, clip_frames, clip, "--out", tmp_path / "d.json", "--fps", "8",
                           "--every", "2", "--min-score", MIN_SCORE, "--device", "cpu"])
    assert code == 0, err
    table = json.loads((tmp_path / "d.json").read_text())
    sequence = [d for d in table if d["source"] == str(clip_frames)]
    from_video = [d for d in table if d["source"] == str(clip)]
    assert table == sequence + from_video  # in the order given
    assert {d["frame"] for d in sequence} <= set(range(0, 24, 2))
    assert all(d["file"] == str(clip_frames / f"frame_{d['frame']:03d}.png") for d in sequence)
    key = lambda d: (d["frame"], d["time_s"], *_found([d]))  # noqa: E731
    assert list(map(key, sequence)) == list(map(key, from_video))
    code, _, err = _cli(["detect", checkpoint, clip_frames, "--out", tmp_path / "d.csv", "--every", "6",
                         "--min-score", MIN_SCORE, "--device", "cpu"])
    assert code == 0, err
    times = pd.read_csv(tmp_path / "d.csv").groupby("frame")["time_s"].first()
    assert times.to_dict() == {0: 0.0, 6: 6.0, 12: 12.0, 18: 18.0}  # one frame a second by default


def test_counts_per_minute_are_the_sum_and_the_most_in_one_frame_of_the_table(checkpoint, tmp_path):
    long = tmp_path / "trap.mp4"
    write_video(long, 260, 2, 32, 32)  # 130 s: minutes 0, 1 and 2
    code, out, err = _cli(["detect", checkpoint, long, "--out", tmp_path / "d.csv", "--counts", tmp_path / "c.csv",
                           "--every", "4", "--min-score", MIN_SCORE, "--device", "cpu"])
    assert code == 0, err
    assert f"{long}: 65 frames, " in out and f"counts per minute: {tmp_path / 'c.csv'}" in out
    table = pd.read_csv(tmp_path / "d.csv")
    counts = pd.read_csv(tmp_path / "c.csv")
    assert list(counts.columns) == video.COUNT_COLUMNS
    assert len(table) > 0 and table["category"].nunique() > 1

    times = [i / 2 for i in range(0, 260, 4)]  # the frames looked at: every 4th at 2 fps
    frames_per_minute = pd.Series([math.floor(t / 60) for t in times]).value_counts().sort_index()
    per_frame = (table.assign(minute=(table["time_s"] // 60).astype(int))
                 .groupby(["minute", "frame", "category"]).size().unstack(fill_value=0))
    expected = []
    for minute, frames in frames_per_minute.items():
        for name in ("hornet", "bee", "wasp"):  # class order: category ids sorted
            in_minute = per_frame.loc[minute][name] if minute in per_frame.index and name in per_frame else []
            expected.append({"source": str(long), "minute": minute, "category": name, "frames": frames,
                             "detections": int(sum(in_minute)), "max_per_frame": int(max(in_minute, default=0))})
    assert counts.to_dict("records") == expected
    assert frames_per_minute.tolist() == [30, 30, 5]
    assert (counts["max_per_frame"] <= counts["detections"]).all()


def test_minute_counts_tell_a_sum_over_frames_from_the_most_at_once():
    source = video.Source(video.Path("trap"), "frames")
    counts = video.MinuteCounts(["hornet", "bee"])
    for time_s, names in ((0, ["hornet"] * 2), (30, ["hornet"] * 3 + ["bee"]), (59.9, []), (61, ["bee"])):
        counts.add(video.Frame(source, int(time_s), time_s, None, None), [{"category": n} for n in names])
    assert counts.records() == [
        {"source": "trap", "minute": 0, "category": "hornet", "frames": 3, "detections": 5, "max_per_frame": 3},
        {"source": "trap", "minute": 0, "category": "bee", "frames": 3, "detections": 1, "max_per_frame": 1},
        {"source": "trap", "minute": 1, "category": "hornet", "frames": 1, "detections": 0, "max_per_frame": 0},
        {"source": "trap", "minute": 1, "category": "bee", "frames": 1, "detections": 1, "max_per_frame": 1}]


def _video_info(path) -> tuple[int, int, int, str]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for _ in container.decode(stream)), stream.width, stream.height, stream.codec_context.name


def test_draw_writes_an_annotated_video_and_annotated_frames(checkpoint, clip, clip_frames, tmp_path, monkeypatch):
    odd = tmp_path / "odd.mov"  # PNG frames: any width and height
    write_video(odd, 5, 4, 31, 23, codec="png", pix_fmt="rgb24")
    code, _, err = _cli(["detect", checkpoint, clip, odd, clip_frames, "--out", tmp_path / "d.json", "--every", "2",
                         "--draw", tmp_path / "drawn", "--min-score", "0.4", "--device", "cpu"])
    assert code == 0, err
    assert _video_info(tmp_path / "drawn" / "clip.mp4") == (12, 64, 48, "h264")
    assert _video_info(tmp_path / "drawn" / "odd.mp4") == (3, 32, 24, "h264")  # yuv420p: padded to even
    assert sorted(p.name for p in (tmp_path / "drawn" / "clip_frames").iterdir()) == [
        f"frame_{i:03d}.png" for i in range(0, 24, 2)]
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["clip.mp4", "clip_frames", "odd.mp4"]

    monkeypatch.setattr(video, "ENCODERS", ("no-such-encoder", "mpeg4"))  # an FFmpeg build without libx264
    code, _, err = _cli(["detect", checkpoint, odd, "--out", tmp_path / "e.json", "--draw", tmp_path / "mpeg4",
                         "--device", "cpu"])
    assert code == 0, err
    assert _video_info(tmp_path / "mpeg4" / "odd.mp4") == (5, 32, 24, "mpeg4")


def test_unreadable_inputs_are_named_with_the_fix_and_nothing_is_written(checkpoint, clip, tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"not a video" * 100)
    with av.open(str(tmp_path / "sound.mkv"), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out" / "d.json"
    for inputs, message in (
            ([clip, tmp_path / "broken.mp4"], r"broken.mp4 is not a readable video \(.*\): .*check that it plays"),
            ([tmp_path / "sound.mkv"], r"sound.mkv has no video stream \(audio\): give a video file"),
            ([tmp_path / "empty", clip], r"empty holds no frames \(.*\): give a folder of frames"),
            ([tmp_path / "missing.mp4"], r"missing.mp4 does not exist: name videos")):
        code, stdout, err = _cli(["detect", checkpoint, *inputs, "--out", out, "--draw", tmp_path / "drawn"])
        assert code == 2 and stdout == "" and err.startswith("frelon detect: error: "), err
        assert "Traceback" not in err
        with pytest.raises(FrelonError, match=message):
            inference.detect_frames(checkpoint, inputs, out)
    code, _, err = _cli(["detect", checkpoint, clip, "--out", tmp_path / "d.txt"])
    assert code == 2 and "name a .json (a list of detections) or a .csv" in err
    with pytest.raises(FrelonError, match="--every takes a whole number of frames, 1 or more"):  # argparse's too
        inference.detect_frames(checkpoint, [clip], out, every=0)
    assert not (tmp_path / "out").exists() and not (tmp_path / "drawn").exists()


def test_a_run_that_stops_midway_leaves_no_table_and_no_video(checkpoint, clip, tmp_path, monkeypatch):
    read = inference._read

    def failing(frame, pre):
        if frame.index == 10:
            raise FrelonError(f"{frame.source.path}: frame 10 is damaged")
        return read(frame, pre)

    monkeypatch.setattr(inference, "_read", failing)
    code, _, err = _cli(["detect", checkpoint, clip, "--out", tmp_path / "out" / "d.json", "--counts",
                         tmp_path / "out" / "c.csv", "--draw", tmp_path / "drawn", "--device", "cpu"])
    assert code == 2 and "frame 10 is damaged" in err
    assert list((tmp_path / "drawn").iterdir()) == [] and not (tmp_path / "out").exists()


def test_frames_are_decoded_on_the_reading_thread_one_ahead(checkpoint, clip, tmp_path, monkeypatch):
    decode, predict, events = video.video_frames, inference.FixedSizePredictor.__call__, []

    def decoding(path, every=1):
        for index, time_s, picture in decode(path, every):
            events.append(("decoded", index, threading.current_thread() is threading.main_thread()))
            yield index, time_s, picture

    def predicting(self, images):  # waits (10 s at most) for the next frame: it is decoded meanwhile
        done = sum(e[0] == "predicted" for e in events)
        deadline = time.monotonic() + 10
        while done < 3 and sum(e[0] == "decoded" for e in events) < done + 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        events.append(("predicted",))
        return predict(self, images)

    monkeypatch.setattr(video, "video_frames", decoding)
    monkeypatch.setattr(inference.FixedSizePredictor, "__call__", predicting)
    inference.detect_frames(checkpoint, [clip], tmp_path / "d.json", every=6, device="cpu")
    assert events == [("decoded", 0, False), ("decoded", 6, False), ("predicted",), ("decoded", 12, False),
                      ("predicted",), ("decoded", 18, False), ("predicted",), ("predicted",)]


def test_export_checks_on_a_few_frames_of_a_video(checkpoint, clip):
    net = export._detector(checkpoint)
    x = export._read_images(net, [clip])
    frames = decoded(clip)
    expected = torch.stack([letterboxed(frames[i], SIZE)[0] for i in (0, 8, 16)])  # at 0, 1 and 2 s
    torch.testing.assert_close(x, expected, rtol=0, atol=0)


@pytest.mark.slow  # an ONNX export: seconds of tracing
def test_frelon_export_takes_a_video_among_its_images(checkpoint, clip, clip_frames, tmp_path):
    code, out, err = _cli(["export", checkpoint, "--onnx", tmp_path / "m.onnx", "--images", clip,
                           clip_frames / "frame_000.png"])
    assert code == 0, err
    assert "on 4 images" in out and (tmp_path / "m.onnx").is_file()
