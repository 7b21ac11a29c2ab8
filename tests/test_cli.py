"""The `frelon` command's user-facing side for `classify`, `detect`, `export` and `evaluate`: every mistake (a
missing, foreign or wrong-task checkpoint, an output that cannot be written, a value out of range) is one line
naming the fix, never a traceback; unreadable images are skipped and listed; --recursive, --help's defaults,
--version, the checkpoint first, a warning for thumbnails and drawings in their input's format."""

import argparse
import contextlib
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from frelon import cli
from frelon.errors import FrelonError, FrelonWarning
from frelon.models.centernet import CenterNet
from frelon.models.resnet import ResNet
from frelon.tasks.classify import classify
from frelon.tasks.detection.inference import detect
from test_classify import MODEL as CLASSIFIER, PRE as CLASSIFIER_PRE
from test_detect_video import CLASSES, SPEC as DETECTOR

DETECTOR_PRE = {"input_size": 32, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}  # small: quick on a CPU

COMMANDS = ("classify", "detect", "export", "evaluate")


def _cli(argv: list) -> tuple[int, str, str]:
    """`frelon ARGV` in this process: its exit code (argparse's too), stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in argv])
        except SystemExit as exc:  # argparse: --help, --version, a bad value
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def _one_error(command: str, code: int, out: str, err: str) -> str:
    """The single error line a user mistake gives, checked to be that and nothing else."""
    assert code == 2 and out == "", (code, out, err)
    assert err.startswith(f"frelon {command}: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def classifier(folder):
    torch.manual_seed(0)
    path = folder / "classifier" / "model.pt"
    path.parent.mkdir()
    torch.save({"model": ResNet("resnet18", 2, "batch", True, False).eval().state_dict(),
                "spec": {"task": "classification", "model": CLASSIFIER},
                "classes": [{"id": 0, "name": "absence"}, {"id": 1, "name": "presence"}],
                "preprocessing": CLASSIFIER_PRE, "diverged": None}, path)
    return path


@pytest.fixture(scope="module")
def detector(folder):
    """A small detector with peaks and boxes of some size, as test_detect_video's, at a smaller input size."""
    torch.manual_seed(0)
    net = CenterNet(3, decoder="deconv").train()
    with torch.no_grad():
        net.heatmap[-1].weight.normal_(std=10)
        net.size[-1].bias.fill_(4.0)
        net(torch.randn(2, 3, DETECTOR_PRE["input_size"], DETECTOR_PRE["input_size"]))
    path = folder / "detector" / "model.pt"
    path.parent.mkdir()
    torch.save({"model": net.eval().state_dict(), "spec": {"task": "detection", "model": DETECTOR},
                "classes": CLASSES, "preprocessing": DETECTOR_PRE, "diverged": None}, path)
    return path


def _picture(path, width: int, height: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def photos(folder):
    """Two photos, a damaged upload and a subfolder with two more: trap/{a.png, b.jpg, c.jpg, day2/{d.jpg,
    e.png}}."""
    trap = folder / "trap"
    _picture(trap / "a.png", 60, 45, 1)
    _picture(trap / "b.jpg", 50, 70, 2)
    (trap / "c.jpg").write_bytes(b"not a jpeg")
    _picture(trap / "day2" / "d.jpg", 48, 40, 3)
    _picture(trap / "day2" / "e.png", 40, 48, 4)
    return trap


def _args(command: str, checkpoint, folder, photos) -> list:
    """A full command line for `command` with this checkpoint, its outputs in `folder`."""
    return {"classify": ["classify", checkpoint, photos, "--out", folder / "p.csv", "--device", "cpu"],
            "detect": ["detect", checkpoint, photos, "--out", folder / "d.json", "--device", "cpu"],
            "export": ["export", checkpoint, "--onnx", folder / "m.onnx"],
            "evaluate": ["evaluate", checkpoint, _spec(folder, "classification"), "--out", folder / "m.json"]}[command]


def _spec(folder, task: str):
    path = folder / f"{task}.spec.json"
    path.write_text(json.dumps({"task": task, "device": "cpu", "train": {"world_size": 1}}))
    return path


# A missing checkpoint, a run's folder, a file that is not a checkpoint


@pytest.mark.parametrize("command", COMMANDS)
def test_a_missing_checkpoint_is_one_line_naming_a_run_s_model_pt(command, tmp_path, photos):
    err = _one_error(command, *_cli(_args(command, tmp_path / "nowhere" / "model.pt", tmp_path, photos)))
    assert "nowhere/model.pt does not exist: give the model.pt of a finished run (results/runs/" in err
    assert not [p for p in tmp_path.iterdir() if not p.name.endswith(".spec.json")]  # nothing written


@pytest.mark.parametrize("command", COMMANDS)
def test_a_run_folder_for_its_checkpoint_says_pass_its_model_pt(command, classifier, tmp_path, photos):
    err = _one_error(command, *_cli(_args(command, classifier.parent, tmp_path, photos)))
    assert f"{classifier.parent} is a run's folder, not its checkpoint: pass {classifier}" in err
    err = _one_error(command, *_cli(_args(command, tmp_path, tmp_path, photos)))  # no model.pt in it
    assert f"{tmp_path} is a folder with no model.pt" in err


def _foreign_files(folder, classifier) -> dict:
    """Files given as a checkpoint by mistake, and what the error says of each."""
    state = torch.load(classifier, weights_only=True)
    (folder / "notes.txt").write_text("trap 3: two hornets on Monday\n")
    (folder / "empty.pt").write_bytes(b"")
    (folder / "cut.pt").write_bytes(classifier.read_bytes()[:4000])  # a copy that stopped
    torch.save(state["model"], folder / "weights.pt")  # `frelon export-weights`' kind: a bare state dict
    torch.save(torch.zeros(3), folder / "tensor.pt")
    torch.save({"spec": {"task": "classification"}}, folder / "no-model.pt")
    torch.save(torch.nn.Linear(2, 2), folder / "module.pt")  # a whole pickled model
    return {"notes.txt": r"notes.txt is not a PyTorch checkpoint \(it is a text file\): give the model.pt",
            "empty.pt": r"empty.pt is not a PyTorch checkpoint \(it is empty\)",
            "cut.pt": r"cut.pt is a damaged PyTorch checkpoint \(.+\): copied in part, or cut short; copy it again",
            "weights.pt": r"weights.pt holds no trained classifier or detector \(no spec.task and model in it",
            "tensor.pt": r"tensor.pt holds no trained classifier or detector",
            "no-model.pt": r"no-model.pt holds no trained classifier or detector",
            "module.pt": r"module.pt is not a run's checkpoint: it holds Python objects besides tensors"}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_file_that_is_not_a_run_s_checkpoint_is_named_with_what_it_is(command, classifier, tmp_path, photos):
    for name, message in _foreign_files(tmp_path, classifier).items():
        err = _one_error(command, *_cli(_args(command, tmp_path / name, tmp_path, photos)))
        assert re.search(message, err), (name, err)


def test_a_checkpoint_without_its_preprocessing_or_with_weights_of_another_model_is_named(classifier, detector,
                                                                                        tmp_path, photos):
    state = torch.load(classifier, weights_only=True)
    torch.save({**state, "preprocessing": {"mean": [0.5] * 3}, "classes": []}, tmp_path / "incomplete.pt")
    err = _one_error("classify", *_cli(_args("classify", tmp_path / "incomplete.pt", tmp_path, photos)))
    assert "incomplete.pt is incomplete: it has no preprocessing.crop, preprocessing.resize, preprocessing.std, " \
           "classes" in err
    state["spec"] = {"task": "classification", "model": {**CLASSIFIER, "arch": "resnet34"}}
    torch.save(state, tmp_path / "other.pt")
    err = _one_error("classify", *_cli(_args("classify", tmp_path / "other.pt", tmp_path, photos)))
    assert "other.pt's weights do not fit the model its spec describes (" in err and "retrain the run" in err
    state = torch.load(detector, weights_only=True)
    state["classes"] = state["classes"][:2]  # a heatmap of 3 channels for 2 classes
    torch.save(state, tmp_path / "two.pt")
    err = _one_error("detect", *_cli(_args("detect", tmp_path / "two.pt", tmp_path, photos)))
    assert "two.pt's weights do not fit the model its spec describes" in err


# The other task's checkpoint


def test_a_classifier_given_to_detect_and_a_detector_given_to_classify_name_the_other_command(classifier, detector,
                                                                                            tmp_path, photos):
    err = _one_error("detect", *_cli(_args("detect", classifier, tmp_path, photos)))
    assert f"{classifier} is a classification model, not a detector: give the model.pt of a detection run" in err
    assert "or run `frelon classify` on it" in err
    err = _one_error("classify", *_cli(_args("classify", detector, tmp_path, photos)))
    assert f"{detector} is a detection model, not a classifier: give the model.pt of a classification run" in err
    assert "or run `frelon detect` on it" in err
    code, out, err = _cli(["evaluate", detector, _spec(tmp_path, "classification"), "--out", tmp_path / "m.json"])
    assert "is a detection model but " in _one_error("evaluate", code, out, err)
    assert "is a classification spec: give the model.pt of the run this spec.json describes" in err


def test_a_diverged_run_is_refused_by_classify_and_scored_by_evaluate(classifier, tmp_path, photos, monkeypatch):
    state = torch.load(classifier, weights_only=True)
    torch.save({**state, "diverged": {"step": 12, "epoch": 1}}, tmp_path / "diverged.pt")
    err = _one_error("classify", *_cli(_args("classify", tmp_path / "diverged.pt", tmp_path, photos)))
    assert "diverged.pt diverged during training (iteration 12): its weights are not finite; retrain it" in err
    launched = []
    monkeypatch.setattr(cli, "_launch", lambda args, spec, worker_args: launched.append(worker_args))
    code, _, err = _cli(_args("evaluate", tmp_path / "diverged.pt", tmp_path, photos))
    assert code == 0 and len(launched) == 1, err


# Outputs that cannot be written


@pytest.mark.parametrize("command,option", [("classify", "--out"), ("detect", "--out"), ("detect", "--counts"),
                                            ("detect", "--draw"), ("export", "--onnx"), ("evaluate", "--out")])
def test_an_output_under_a_file_is_named_before_any_work(command, option, classifier, detector, tmp_path, photos):
    (tmp_path / "notes").write_text("a file where a folder would be")
    argv = _args(command, detector if command == "detect" else classifier, tmp_path, photos)
    argv += [option, tmp_path / "notes" / "out.csv"]  # a later option wins
    err = _one_error(command, *_cli(argv))
    assert f"{option} {tmp_path / 'notes' / 'out.csv'}: {tmp_path / 'notes'} is a file, not a folder; choose " \
           f"another path" in err


def test_an_output_file_that_is_a_folder_and_drawings_into_a_file_are_named(classifier, detector, tmp_path, photos):
    err = _one_error("classify", *_cli(_args("classify", classifier, tmp_path, photos) + ["--out", tmp_path]))
    assert f"--out {tmp_path} is a folder: name a file to write, e.g. {tmp_path / 'predictions.csv'}" in err
    (tmp_path / "drawn").write_text("")
    err = _one_error("detect", *_cli(_args("detect", detector, tmp_path, photos) + ["--draw", tmp_path / "drawn"]))
    assert "is a file, not a folder: name a folder for the drawings" in err


# Unreadable images: skipped and listed


def test_detect_skips_an_unreadable_photo_and_lists_it(detector, tmp_path, photos):
    code, out, err = _cli(_args("detect", detector, tmp_path, photos))
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"{photos / 'a.png'}: ") and len(out.splitlines()) == 2
    assert err == f"frelon detect: warning: 1 unreadable file skipped: {photos / 'c.jpg'}\n"
    assert {d["file_name"] for d in json.loads((tmp_path / "d.json").read_text())} <= {str(photos / "a.png"),
                                                                                     str(photos / "b.jpg")}


def test_detect_skips_an_unreadable_frame_and_lists_it(detector, tmp_path, photos):
    code, out, err = _cli(_args("detect", detector, tmp_path, photos) + ["--out", tmp_path / "d.csv"])
    assert code == 0, err
    assert out.startswith(f"{photos}: 2 frames, ")  # a.png and b.jpg; c.jpg left out
    assert err == f"frelon detect: warning: 1 unreadable file skipped: {photos / 'c.jpg'}\n"


def test_nothing_readable_is_an_error(classifier, detector, tmp_path, photos):
    for command, checkpoint in (("classify", classifier), ("detect", detector)):
        argv = [command, checkpoint, photos / "c.jpg", "--out", tmp_path / "out.csv", "--device", "cpu"]
        err = _one_error(command, *_cli(argv))
        assert "none of the 1 files could be read as an image: unreadable: " in err


def test_classify_lists_the_unreadable_files_on_stderr_too(classifier, tmp_path, photos):
    code, out, err = _cli(_args("classify", classifier, tmp_path, photos))
    assert code == 0 and f"2 images classified, 1 unreadable ({photos / 'c.jpg'})" in out
    assert err == f"frelon classify: warning: 1 unreadable file skipped: {photos / 'c.jpg'}\n"


# --recursive


def test_recursive_classify_takes_the_images_of_subfolders_in_name_order(classifier, photos):
    assert list(classify(classifier, [photos], device="cpu")["file"]) == [str(photos / n) for n in
                                                                          ("a.png", "b.jpg", "c.jpg")]
    table = classify(classifier, [photos], device="cpu", recursive=True)
    assert list(table["file"]) == [str(photos / n) for n in ("a.png", "b.jpg", "c.jpg", "day2/d.jpg", "day2/e.png")]
    code, out, err = _cli(["classify", classifier, photos, "-r", "--out", photos.parent / "r.csv", "--device", "cpu"])
    assert code == 0 and "4 images classified, 1 unreadable" in out, err


def test_recursive_detect_finds_photos_in_subfolders_and_draws_them_there(detector, tmp_path, photos):
    assert [p for p, _, _ in detect(detector, [photos], device="cpu")] == [photos / "a.png", photos / "b.jpg"]
    code, out, err = _cli(_args("detect", detector, tmp_path, photos) + ["--recursive", "--draw", tmp_path / "drawn"])
    assert code == 0, err
    assert [line.split(":")[0] for line in out.splitlines()] == [
        str(photos / n) for n in ("a.png", "b.jpg", "day2/d.jpg", "day2/e.png")]
    assert sorted(str(p.relative_to(tmp_path / "drawn")) for p in (tmp_path / "drawn").rglob("*.*")) == [
        "a.png", "b.jpg", "day2/d.jpg", "day2/e.png"]


def test_recursive_detect_reads_each_subfolder_of_frames_as_a_sequence_of_its_own(detector, tmp_path, photos):
    code, out, err = _cli(_args("detect", detector, tmp_path, photos) + ["-r", "--out", tmp_path / "d.csv",
                                                                         "--draw", tmp_path / "drawn"])
    assert code == 0, err
    assert [line.split(":")[0] for line in out.splitlines()[:2]] == [str(photos), str(photos / "day2")]
    assert "day2: 2 frames" in out
    assert sorted(str(p.relative_to(tmp_path / "drawn")) for p in (tmp_path / "drawn").rglob("*.*")) == [
        "trap/a.png", "trap/b.jpg", "trap/day2/d.jpg", "trap/day2/e.png"]


def test_recursive_export_checks_on_the_images_of_subfolders_too(classifier, tmp_path):
    from frelon.tasks import export

    _picture(tmp_path / "days" / "a.png", 40, 40, 1)
    _picture(tmp_path / "days" / "monday" / "b.png", 40, 40, 2)
    net = export._classifier(classifier)
    assert len(export._read_images(net, [tmp_path / "days"])) == 1
    assert len(export._read_images(net, [tmp_path / "days"], recursive=True)) == 2
    assert cli.build_parser().parse_args(["export", "m.pt", "--onnx", "m.onnx", "--images", "x", "-r"]).recursive


def test_without_recursive_a_folder_of_subfolders_only_says_how_to_search_them(classifier, tmp_path):
    _picture(tmp_path / "days" / "monday" / "a.png", 40, 40)
    err = _one_error("classify", *_cli(["classify", classifier, tmp_path / "days", "--out", tmp_path / "p.csv"]))
    assert "no images (" in err and "(their subfolders were not searched: --recursive searches them)" in err


# Drawings in their input's format


def test_a_drawing_keeps_its_inputs_format_jpeg_at_quality_95(detector, tmp_path, photos):
    for extra in ([], ["--out", tmp_path / "d.csv"]):  # photos, then frames
        drawn = tmp_path / f"drawn{len(extra)}"
        code, _, err = _cli(_args("detect", detector, tmp_path, photos) + extra + ["--draw", drawn])
        assert code == 0, err
        root = drawn / "trap" if extra else drawn
        assert sorted(p.name for p in root.iterdir()) == ["a.png", "b.jpg"]
        with Image.open(root / "b.jpg") as jpeg, Image.open(root / "a.png") as png:
            assert (jpeg.format, jpeg.size, png.format, png.size) == ("JPEG", (50, 70), "PNG", (60, 45))
            assert jpeg.quantization[0][0] == 2  # quality 95's luminance table (quality 75's starts with 8)


# A warning for thumbnails


def test_an_image_far_smaller_than_the_input_gives_a_one_line_warning_and_the_run_goes_on(classifier, detector,
                                                                                        tmp_path):
    _picture(tmp_path / "small" / "thumb.png", 7, 5)  # shorter side 5 < 32 / 4 (classifier), longer 7 (detector)
    _picture(tmp_path / "small" / "fine.png", 40, 30)
    for command, checkpoint in (("classify", classifier), ("detect", detector)):
        code, out, err = _cli([command, checkpoint, tmp_path / "small", "--out", tmp_path / "out.json",
                               "--device", "cpu"])
        assert code == 0 and out.count("\n") >= 2, err
        assert err.count("\n") == 1 and err.startswith(f"frelon {command}: warning: {tmp_path / 'small' / 'thumb.png'}"
                                                       f" is 7 x 5 px, far smaller than the model's 32 px input"), err
    with pytest.warns(FrelonWarning, match="enlarged 6x"):  # 32 / 5 for the classifier
        classify(classifier, [tmp_path / "small" / "thumb.png"], device="cpu")


# --help, ranges, --version, the checkpoint first


def _commands(parser: argparse.ArgumentParser, prefix: str = "frelon"):
    """Every (name, parser) of the command line, nested ones too."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield f"{prefix} {name}", child
                yield from _commands(child, f"{prefix} {name}")


def test_every_option_has_a_help_text_and_help_shows_the_defaults():
    commands = dict(_commands(cli.build_parser()))
    assert {"frelon classify", "frelon detect", "frelon export", "frelon evaluate",
            "frelon prepare-detection yolo"} <= set(commands)
    for name, parser in commands.items():
        shown = " ".join(parser.format_help().split())
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help and action.help.strip(), (name, action.dest)
            if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
                assert f"(default: {action.default})" in shown, (name, action.dest)
    code, out, _ = _cli(["detect", "--help"])
    assert code == 0 and "(default: 0.3)" in " ".join(out.split()) and "-r, --recursive" in out


@pytest.mark.parametrize("argv,message", [
    (["detect", "m.pt", "x", "--out", "d.json", "--min-score", "1.5"],
     "argument --min-score: 1.5 is out of range: give a number in [0, 1]"),
    (["detect", "m.pt", "x", "--out", "d.json", "--min-score", "-0.1"], "give a number in [0, 1]"),
    (["detect", "m.pt", "x", "--out", "d.json", "--every", "0"],
     "argument --every: 0 is out of range: give a whole number, 1 or more"),
    (["detect", "m.pt", "x", "--out", "d.json", "--every", "2.5"], "'2.5' is not a whole number"),
    (["detect", "m.pt", "x", "--out", "d.json", "--fps", "0"], "argument --fps: 0 is out of range: give a number "
                                                               "above 0"),
    (["detect", "m.pt", "x", "--out", "d.json", "--fps", "nan"], "nan is out of range"),
    (["export", "m.pt", "--onnx", "m.onnx", "--tolerance", "-1"], "give a number, 0 or more"),
    (["prepare", "src", "out", "--classes", "a,b", "--size", "32", "--val", "1"], "give a number in [0, 1)"),
    (["prepare", "src", "out", "--classes", "a,b", "--size", "0"], "argument --size: 0 is out of range"),
    (["demo-data", "hornet", "out", "--presence", "-3"], "argument --presence: -3 is out of range"),
    (["train", "spec.json", "--threads", "0"], "argument --threads: 0 is out of range"),
])
def test_a_value_out_of_range_is_an_argparse_error_naming_the_range(argv, message):
    code, out, err = _cli(argv)
    assert code == 2 and out == "" and f"frelon {argv[0]}: error: " in err and message in err, err


def test_the_ends_of_a_range_are_in_it():
    args = cli.build_parser().parse_args(["detect", "m.pt", "x", "--out", "d.json", "--min-score", "0",
                                          "--every", "1", "--fps", "0.01"])
    assert (args.min_score, args.every, args.fps) == (0, 1, 0.01)
    assert cli.build_parser().parse_args(["detect", "m.pt", "x", "--out", "d.json", "--min-score", "1"]).min_score == 1


def test_version_prints_the_installed_version_or_the_packages(monkeypatch):
    from importlib import metadata

    import frelon

    code, out, _ = _cli(["--version"])
    assert code == 0 and out == f"frelon {metadata.version('frelon')}\n"

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)  # a source tree that is not installed
    assert cli.version() == frelon.__version__


def test_evaluate_takes_the_checkpoint_first_and_as_the_option_it_had(classifier, tmp_path, monkeypatch):
    launched = []
    monkeypatch.setattr(cli, "_launch", lambda args, spec, worker_args: launched.append(worker_args))
    spec, out = _spec(tmp_path, "classification"), tmp_path / "m.json"
    for argv in (["evaluate", classifier, spec, "--out", out], ["evaluate", spec, "--checkpoint", classifier,
                                                                 "--out", out]):
        code, _, err = _cli(argv)
        assert code == 0, err
    assert launched == [["evaluate", str(spec), "--checkpoint", str(classifier), "--out", str(out)]] * 2
    err = _one_error("evaluate", *_cli(["evaluate", spec, classifier, "--out", out]))
    assert f"the checkpoint comes first: frelon evaluate {classifier} {spec}" in err
    err = _one_error("evaluate", *_cli(["evaluate", spec, "--out", out]))
    assert "no checkpoint: give it first, frelon evaluate " in err
    err = _one_error("evaluate", *_cli(["evaluate", classifier, tmp_path / "none.json", "--out", out]))
    assert "none.json does not exist: give a run's spec.json" in err
    assert launched == [launched[0]] * 2


def test_the_checkpoint_is_the_first_argument_of_every_command_that_takes_one():
    for name, parser in _commands(cli.build_parser()):
        positionals = [a for a in parser._actions if not a.option_strings]
        takes = [a for a in parser._actions if a.dest in ("checkpoint", "checkpoint_option")]
        if takes:
            assert positionals[0].dest == "checkpoint", name


def test_errors_raised_by_the_tasks_themselves_are_frelon_errors(classifier, photos):
    with pytest.raises(FrelonError, match="is a classification model, not a detector"):
        detect(classifier, [photos], device="cpu")
