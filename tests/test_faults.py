"""Faults (issue 13): a full disk, malformed or missing data, shell metacharacters in the config, a detection run
killed half-way through an epoch. (An interrupted download resumed with a Range request: tests/test_sources.py.)"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from PIL import Image

from conftest import REPO, copy_workflow, run, tool_env
from detection_fixtures import detection_spec, prepared_voc
from frelon import atomic
from frelon.config import validate
from frelon.data import coco, folder, sources, voc
from frelon.data.demo import generate_hornet
from frelon.errors import FrelonError
from frelon.tasks.detection.task import DetectionTask
from frelon.train import checkpoints, engine
from frelon.parallel.distributed import World

CPU = World(0, 1, 0, torch.device("cpu"))


# -- a full disk ----------------------------------------------------------------------------------------------------

class _FillingFile:
    """A file on a disk with `room[0]` bytes left: a write past them stores what fits, then fails with ENOSPC."""

    def __init__(self, file, room: list[int]):
        self._file, self._room = file, room

    def write(self, data):
        if len(data) > self._room[0]:
            self._file.write(data[:self._room[0]])
            self._room[0] = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room[0] -= len(data)
        return self._file.write(data)

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


def disk_fills(monkeypatch, module, room: int, free_after: int = 0) -> None:
    """Files that `module` opens for writing share `room` bytes; the disk then reports `free_after` bytes free."""
    left = [room]

    def filling_open(path, mode="r", *args, **kwargs):
        file = open(path, mode, *args, **kwargs)
        return _FillingFile(file, left) if set(mode) & set("wax+") else file

    monkeypatch.setattr(module, "open", filling_open, raising=False)
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: SimpleNamespace(free=free_after))


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one_and_says_what_to_free(tmp_path, monkeypatch):
    path = tmp_path / "state" / "last.pt"
    checkpoints.save(path, {"step": 1, "w": torch.ones(100_000)})
    before = path.read_bytes()
    disk_fills(monkeypatch, atomic, room=65_536)
    with pytest.raises(FrelonError) as caught:
        checkpoints.save(path, {"step": 2, "w": torch.zeros(100_000)})
    assert path.read_bytes() == before and os.listdir(path.parent) == ["last.pt"]  # no temporary left
    assert str(caught.value) == (
        f"no space left on the disk holding {path.parent} (No space left on device): writing last.pt stopped after "
        f"65.5 KB; the previous last.pt is unchanged. It needs more than that, likely about the "
        f"{len(before) / 1000:.1f} KB of the previous one; 0 bytes left there: free at least "
        f"{len(before) / 1000:.1f} KB on that disk (finished runs under results/, archives in data/archives/ and "
        f"data/downloads/ once extracted, other programs' files) or move {path.parent} to a larger disk, then rerun")


def _contents(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_full_disk_while_a_dataset_is_prepared_keeps_the_previous_set(tmp_path, monkeypatch):
    generate_hornet(tmp_path / "raw", 10, 10, size=32, seed=0)
    out = tmp_path / "prepared"
    folder.prepare(tmp_path / "raw", ["absence", "presence"], 0.2, 0.2, 32, 0, out)
    before = _contents(out)
    disk_fills(monkeypatch, atomic, room=len(before["train.pt"]) + 1000, free_after=2_000)  # full in val.pt
    with pytest.raises(FrelonError, match=rf"no space left on the disk holding {re.escape(str(tmp_path))} .*"
                                          r"writing prepared stopped after .*; the previous prepared is unchanged\. "
                                          r".*free at least .* on that disk"):
        folder.prepare(tmp_path / "raw", ["absence", "presence"], 0.2, 0.2, 32, 1, out)
    assert _contents(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "raw"]  # no half-written work folder


def test_a_full_disk_during_a_download_keeps_what_arrived_and_the_next_run_resumes(http_server, tmp_path,
                                                                                   monkeypatch):
    payload = bytes(range(256)) * 8192  # 2 MiB
    (http_server.root / "voc.tar").write_bytes(payload)
    url, dest = f"{http_server.url}/voc.tar", tmp_path / "dl" / "voc.tar"
    digest = hashlib.sha256(payload).hexdigest()
    disk_fills(monkeypatch, sources, room=700_000)
    with pytest.raises(FrelonError, match=rf"no space left on the disk holding {re.escape(str(dest.parent))} .*"
                                          rf"while downloading {url}: 700\.0 KB are in .*\.voc\.tar\.part and the next "
                                          r"run resumes from there; 1\.4 MB more are needed and 0 bytes left there: "
                                          r"free at least 1\.4 MB on that disk"):
        sources.fetch(url, dest, sha256=digest, progress=False, backoff_s=0.01)
    monkeypatch.undo()  # space freed
    assert sources.fetch(url, dest, sha256=digest, progress=False).read_bytes() == payload
    assert os.listdir(dest.parent) == ["voc.tar"]
    assert http_server.requests == [("/voc.tar", None), ("/voc.tar", "bytes=700000-")]


# -- malformed or missing data --------------------------------------------------------------------------------------

def _voc_xml(width: int, height: int, objects: list[tuple[str, tuple]]) -> str:
    boxes = "".join(f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
                    f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>" for name, (x0, y0, x1, y1) in objects)
    size = f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
    return f"<annotation>{size}{boxes}</annotation>"


def mini_devkit(root: Path, train: dict[str, list], test: dict[str, list]) -> Path:
    """A VOCdevkit with VOC2007 only: 40x30 images, `{stem: [(class, (xmin, ymin, xmax, ymax)), ...]}` per set."""
    base = root / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / sub).mkdir(parents=True)
    for image_set, images in (("trainval", train), ("test", test)):
        (base / "ImageSets" / "Main" / f"{image_set}.txt").write_text("".join(f"{stem}\n" for stem in images))
        for stem, objects in images.items():
            (base / "Annotations" / f"{stem}.xml").write_text(_voc_xml(40, 30, objects))
            Image.new("RGB", (40, 30)).save(base / "JPEGImages" / f"{stem}.jpg")
    return root / "VOCdevkit"


def test_voc_boxes_outside_the_image_or_without_area_are_clipped_or_dropped_and_the_counts_printed(tmp_path, capsys):
    from frelon.cli import main

    devkit = mini_devkit(tmp_path, {"a": [("dog", (31, 21, 50, 40)),   # reaches past the 40x30 image: clipped
                                          ("cat", (10, 10, 9, 20)),    # xmax = xmin - 1: no width
                                          ("bird", (45, 5, 50, 10)),   # wholly outside: nothing left
                                          ("cow", (1, 1, 20, 20))]},
                         {"b": [("dog", (1, 1, 10, 10))]})
    assert main(["prepare-voc", str(devkit), str(tmp_path / "prepared"), "--train", "2007:trainval",
                 "--val", "2007:test"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "prepared" / "report.json").read_text())
    assert printed["splits"]["train"] == {"sets": "2007:trainval", "images": 1, "objects": 2, "crowd_or_difficult": 0,
                                          "boxes_without_area": 2, "boxes_clipped_to_image": 1,
                                          "images_without_objects": 0}
    _, images = coco.training_targets(tmp_path / "prepared" / "train.json")
    assert images[1]["boxes"] == [[30.0, 20.0, 10.0, 10.0], [0.0, 0.0, 20.0, 20.0]]
    assert images[1]["labels"] == [voc.VOC_CLASSES.index("dog"), voc.VOC_CLASSES.index("cow")]


def _unparseable(base: Path) -> None:
    (base / "Annotations" / "a.xml").write_text("<annotation><size><width>40</width></annotation")


def _not_a_number(base: Path) -> None:
    xml = base / "Annotations" / "a.xml"
    xml.write_text(xml.read_text().replace("<xmin>1</xmin>", "<xmin>one</xmin>"))


@pytest.mark.parametrize("damage, message", [
    (_unparseable, r"VOC2007/Annotations/a\.xml is not valid XML \(.*line 1.*\): a damaged "
                   r"annotation file; extract the archive again, or fix the file"),
    (_not_a_number, r"VOC2007/Annotations/a\.xml: <xmin> is 'one', not a number; fix the annotation file"),
    (lambda base: (base / "Annotations" / "c.xml").unlink(),
     r"VOC2007/Annotations/c\.xml not found, though .*VOC2007/ImageSets/Main/trainval\.txt lists c: extract the "
     r"archives completely \(or remove c from the list\)"),
    (lambda base: (base / "JPEGImages" / "c.jpg").unlink(),
     r"1 image\(s\) of 2007:trainval are missing from .*VOCdevkit, e\.g\. \['VOC2007/JPEGImages/c\.jpg'\]; extract "
     r"the archives completely"),
    (lambda base: (base / "ImageSets" / "Main" / "test.txt").write_text("\n"),
     r"VOC2007/ImageSets/Main/test\.txt lists no images: an empty or truncated file; extract the archive again"),
], ids=["xml-that-does-not-parse", "coordinate-not-a-number", "annotation-missing", "image-missing", "empty-set"])
def test_damaged_or_incomplete_voc_data_is_named_with_the_fix_and_nothing_is_written(damage, message, tmp_path):
    devkit = mini_devkit(tmp_path, {"a": [("dog", (1, 1, 10, 10))], "c": [("cat", (2, 2, 8, 8))]},
                         {"b": [("dog", (1, 1, 10, 10))]})
    damage(devkit / "VOC2007")
    with pytest.raises(FrelonError, match=message):
        voc.prepare(devkit, tmp_path / "prepared", "2007:trainval", "2007:test")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VOCdevkit"]


GOOD_COCO = {"images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}],
             "categories": [{"id": 3, "name": "hornet"}],
             "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 10, 10], "iscrowd": 0}]}


@pytest.mark.parametrize("text, message", [
    (json.dumps({**GOOD_COCO, "annotations": [{**GOOD_COCO["annotations"][0], "image_id": 7}]}),
     r"instances\.json: annotation 1 refers to image 7, which the file does not list"),
    (json.dumps(GOOD_COCO)[:-40],
     r"instances\.json is not valid JSON \(.*\): a damaged or truncated annotation file; extract or convert it again"),
    (json.dumps({**GOOD_COCO, "annotations": [{"id": 1, "image_id": 1, "category_id": 3}]}),
     r"instances\.json: an image, annotation or category has no 'bbox'; not a COCO instances file, or a damaged one"),
], ids=["unknown-image-id", "truncated", "annotation-without-box"])
def test_damaged_coco_annotations_are_named_with_the_fix(text, message, tmp_path):
    (tmp_path / "instances.json").write_text(text)
    with pytest.raises(FrelonError, match=message):
        coco.training_targets(tmp_path / "instances.json")


# -- shell metacharacters in the config -----------------------------------------------------------------------------

SCHEMA = REPO / "config" / "schema.yaml"
NASTY = "my photos $(touch pwned1); `touch pwned2` 'q' \"dq\" &x"  # a path a user may have, and a shell would run


def _rename(mapping: dict, old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


@pytest.mark.parametrize("where, rename", [
    ("studies.my study; rm -rf ~", lambda c: _rename(c["studies"], "finetune", "my study; rm -rf ~")),
    ("studies.finetune.experiments.$(touch x)",
     lambda c: _rename(c["studies"]["finetune"]["experiments"], "random", "$(touch x)")),
    ("datasets.`id`", lambda c: _rename(c["datasets"], "hornet", "`id`")),
    ("weights.it's", lambda c: _rename(c["weights"], "resnet18", "it's")),
    ("detection_data.voc.archives[0].url",
     lambda c: c["detection_data"]["voc"]["archives"][0].update(url="https://example.org/VOC$(touch x).tar")),
], ids=["study", "experiment", "dataset", "weights", "archive-file"])
def test_names_that_become_folders_in_shell_commands_are_refused_unless_plain(where, rename):
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    rename(config)
    with pytest.raises(FrelonError, match=rf"config key {re.escape(where)}: .* may only hold letters, digits, '_', "
                                          r"'\.' and '-' \('\.' and '-' not first\), as it becomes a folder or file "
                                          r"name in shell commands; rename it"):
        validate(config, SCHEMA)


def test_a_class_name_with_a_comma_is_refused():
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config["datasets"]["hornet"]["classes"] = ["absence", "hornet, asian"]
    with pytest.raises(FrelonError, match="datasets.hornet.classes: 'hornet, asian' holds a comma"):
        validate(config, SCHEMA)


@pytest.mark.slow  # Snakemake runs: seconds
def test_paths_with_shell_metacharacters_reach_each_command_as_one_argument(tmp_path):
    """Every shell command of the jobs that use the paths, printed by a dry run and run with a `frelon` that
    records its arguments: the paths arrive whole, and nothing in them is executed."""
    work = copy_workflow(tmp_path / "work")
    for cls in ("absence", "presence"):
        (work / NASTY / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(work / NASTY / cls / "a.png")
    for sub in ("VOCdevkit", "coco"):
        (work / NASTY / sub).mkdir()
    config = yaml.safe_load((work / "config" / "demo.yaml").read_text())
    config["datasets"]["hornet"]["source"] = NASTY
    export = f"data/demo/weights/{NASTY}/resnet18.pth"
    config["demo"]["pretrain"]["export"] = export
    config["weights"]["resnet18"] = {"url": f"file:{export}", "sha256_url": f"file:{export}.sha256"}
    (work / NASTY / "traps").mkdir()
    config["detection_data"] = {"voc": {**config["detection_data"]["voc"], "devkit": f"{NASTY}/VOCdevkit"},
                                "coco": {"root": f"{NASTY}/coco"},
                                "hornet_traps": {"format": "yolo", "root": f"{NASTY}/traps", "classes": [NASTY]}}
    del config["detection_data"]["voc"]["archives"]
    (work / "nasty.yaml").write_text(yaml.safe_dump(config))
    dry = run(["snakemake", "data/prepared/hornet", "data/weights/resnet18.pth", "data/prepared/voc",
               "data/prepared/coco", "data/prepared/hornet_traps", "-n", "-p", "--cores", "1", "--configfile",
               "nasty.yaml"], cwd=work, timeout=120)
    commands = [line.removeprefix("Shell command: ") for line in dry.stdout.splitlines()
                if line.startswith("Shell command: frelon ")]
    fake = tmp_path / "bin" / "frelon"
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"open({str(tmp_path / 'calls.jsonl')!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    fake.chmod(0o755)
    for command in commands:
        (work / re.search(r"> (\S+) 2>&1$", command)[1]).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["bash", "-c", command], cwd=work, env={**tool_env(), "PATH": f"{fake.parent}:/usr/bin:/bin"},
                       capture_output=True, timeout=30)
    calls = {argv[2]: argv for argv in map(json.loads, (tmp_path / "calls.jsonl").read_text().splitlines())}
    assert not list(work.rglob("pwned*")), "a command ran what a path held:\n" + "\n".join(commands)
    assert calls["data/prepared/hornet"][:2] == ["prepare", NASTY]  # by output: argv[2]
    assert calls[export][:2] == ["export-weights", "data/demo/pretrain/model.pt"]
    assert calls["data/weights/resnet18.pth"][:5] == ["fetch", f"file:{export}", "data/weights/resnet18.pth",
                                                      "--sha256-url", f"file:{export}.sha256"]
    assert calls["data/prepared/voc"][:2] == ["prepare-voc", f"{NASTY}/VOCdevkit"]
    assert calls["data/prepared/coco"][:2] == ["prepare-coco", f"{NASTY}/coco"]
    assert calls[f"{NASTY}/traps"] == ["prepare-detection", "yolo", f"{NASTY}/traps", "data/prepared/hornet_traps",
                                       "--classes", NASTY]


# -- a detection run killed half-way through an epoch ---------------------------------------------------------------

KILLED_AT = """
import json, os, signal, sys
import torch
from frelon.tasks.detection.task import DetectionTask
from frelon.train import engine
from frelon.parallel.distributed import World

class KilledTask(DetectionTask):
    batches = 0

    def loss(self, model, batch):
        self.batches += 1
        if self.batches == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)  # power loss
        return super().loss(model, batch)

torch.set_num_threads(int(sys.argv[3]))
spec = json.loads(open(sys.argv[1]).read())
engine.fit(KilledTask(spec), spec, World(0, 1, 0, torch.device("cpu")))
"""


@pytest.mark.slow  # 8 training steps, 3 of them in a process of its own
def test_a_detection_run_killed_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path, capsys):
    prepared = prepared_voc(tmp_path / "voc", images_per_set=2)  # 4 training images: 2 batches an epoch

    def spec_in(out: Path) -> dict:
        spec = detection_spec(prepared, out, epochs=2, batch_size=2, checkpoint_every=3, log_every=1)
        spec["detection"]["input_size"] = spec["data"]["preprocessing"]["input_size"] = 32  # quicker steps
        (out / "spec.json").write_text(json.dumps(spec))
        return spec

    spec = spec_in(tmp_path / "whole")
    engine.fit(DetectionTask(spec), spec, CPU)

    spec = spec_in(tmp_path / "killed")
    killed = subprocess.run([sys.executable, "-c", KILLED_AT, str(tmp_path / "killed" / "spec.json"), "4",
                             str(torch.get_num_threads())], env=tool_env(), capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    state_path = tmp_path / "killed" / "state" / "last.pt"
    state = torch.load(state_path, weights_only=True)
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (1, 1, 3)  # half-way through the second epoch
    assert not (tmp_path / "killed" / "model.pt").exists()

    capsys.readouterr()
    engine.fit(DetectionTask(spec), spec, CPU)
    assert f"resumed from {state_path}: epoch 2, batch 1, step 3" in capsys.readouterr().out
    whole = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)["model"]
    resumed = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)["model"]
    assert whole.keys() == resumed.keys()
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0, msg=key)
    losses = [[row.split(",")[:4] for row in (tmp_path / name / "iterations.csv").read_text().splitlines()]
              for name in ("whole", "killed")]
    assert losses[0] == losses[1]  # step, epoch, loss, lr of every iteration
