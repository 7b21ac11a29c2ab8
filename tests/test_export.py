"""`frelon export`: a run's model.pt as ONNX that onnxruntime runs as PyTorch does, with what a device program
needs (preprocessing, class names) in its metadata; a file that fails the check is never left behind."""

import contextlib
import io
import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image

from frelon.cli import main
from frelon.data.folder import load_square
from frelon.errors import FrelonError
from frelon.models.centernet import CenterNet
from frelon.models.resnet import ResNet
from frelon.tasks import export
from frelon.tasks.classify import load_classifier
from frelon.tasks.detection.inference import load_detector

CLASSIFIER_PRE = {"resize": 40, "crop": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
CLASSIFIER = {"arch": "resnet18", "weights": None, "norm": "batch", "residual": True, "zero_init_residual": False,
              "head_only": False, "num_classes": 2, "weights_path": None}
DETECTOR_PRE = {"input_size": 64, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
DETECTOR = {"arch": "resnet18", "weights": None, "norm": "batch", "decoder": "unet", "head_only": False,
            "weights_path": None}


def _settle_batch_norm(model: torch.nn.Module, size: int) -> None:
    """Running statistics other than the initial 0 and 1, as a trained network has."""
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, size, size))
    model.eval()


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    torch.manual_seed(0)
    model = ResNet("resnet18", 2, "batch", True, False)
    _settle_batch_norm(model, 32)
    path = tmp_path_factory.mktemp("classifier") / "model.pt"
    torch.save({"model": model.state_dict(), "spec": {"task": "classification", "model": CLASSIFIER},
                "classes": [{"id": 0, "name": "absence"}, {"id": 1, "name": "presence"}],
                "preprocessing": CLASSIFIER_PRE, "diverged": None}, path)
    return path


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    torch.manual_seed(1)
    model = CenterNet(3, arch="resnet18", norm="batch", decoder="unet")
    _settle_batch_norm(model, 64)
    path = tmp_path_factory.mktemp("detector") / "model.pt"
    torch.save({"model": model.state_dict(), "spec": {"task": "detection", "model": DETECTOR},
                # ids out of order: the heatmap's channels follow the ids, as CategoryIndex sorts them
                "classes": [{"id": 7, "name": "wasp"}, {"id": 3, "name": "hornet"}, {"id": 5, "name": "bee"}],
                "preprocessing": DETECTOR_PRE, "diverged": None}, path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for name, (w, h) in (("a.png", (60, 45)), ("b.jpg", (50, 70))):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / name)
    return folder


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def classifier_onnx(classifier):
    path = classifier.parent / "export" / "classifier.onnx"
    return path, _cli(["export", str(classifier), "--onnx", str(path)])


@pytest.fixture(scope="module")
def detector_onnx(detector, photos):
    path = detector.parent / "detector.onnx"
    return path, _cli(["export", str(detector), "--onnx", str(path), "--images", str(photos)])


def _images(n: int, size: int, mean: list[float], std: list[float], seed: int) -> np.ndarray:
    pixels = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return ((pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)).numpy()


def _session(path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_the_classifier_runs_in_onnxruntime_as_in_pytorch_for_any_batch(classifier, classifier_onnx):
    path, (code, out, err) = classifier_onnx
    assert code == 0, err
    assert f"{path}: classification (2 classes), input image (batch, 3, 32, 32)" in out
    assert "on 3 generated images" in out and "  logits: " in out
    assert float(out.split("  logits: ")[1].split()[0]) <= 1e-4
    session = _session(path)
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("image", ["batch", 3, 32, 32])]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [("logits", ["batch", 2])]
    model, _, _ = load_classifier(classifier)
    for n, seed in ((1, 10), (5, 11)):
        x = _images(n, 32, CLASSIFIER_PRE["mean"], CLASSIFIER_PRE["std"], seed)
        (logits,) = session.run(None, {"image": x})
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        assert logits.shape == (n, 2)
        np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)
    assert sorted(p.name for p in path.parent.iterdir()) == ["classifier.onnx"]  # no temporary file left


def test_the_classifiers_metadata_says_how_to_feed_it_and_read_it(classifier_onnx):
    path, _ = classifier_onnx
    meta = _session(path).get_modelmeta().custom_metadata_map  # what a device program reads
    assert {k: meta[k] for k in ("task", "input_size", "resize")} == {"task": "classification", "input_size": "32",
                                                                      "resize": "40"}
    assert json.loads(meta["classes"]) == ["absence", "presence"]
    assert json.loads(meta["mean"]) == CLASSIFIER_PRE["mean"] and json.loads(meta["std"]) == CLASSIFIER_PRE["std"]
    assert "centre crop 32 x 32" in meta["preprocessing"] and meta["outputs"].startswith("logits")
    assert {p.key: p.value for p in onnx.load(path).metadata_props} == meta  # the same, read with onnx


@pytest.mark.slow  # a second export: seconds of tracing each
def test_the_detectors_heads_run_in_onnxruntime_as_in_pytorch_on_real_images(detector, detector_onnx):
    path, (code, out, err) = detector_onnx
    assert code == 0, err
    assert f"{path}: detection (3 classes), input image (batch, 3, 64, 64)" in out and "on 2 images" in out
    assert [line.split(":")[0].strip() for line in out.splitlines()[1:]] == ["heatmap", "size", "offset"]
    session = _session(path)
    assert [(o.name, o.shape) for o in session.get_outputs()] == [
        ("heatmap", ["batch", 3, 16, 16]), ("size", ["batch", 2, 16, 16]), ("offset", ["batch", 2, 16, 16])]
    model, _, _ = load_detector(detector)
    x = _images(3, 64, DETECTOR_PRE["mean"], DETECTOR_PRE["std"], 12)
    got = dict(zip(["heatmap", "size", "offset"], session.run(None, {"image": x})))
    with torch.no_grad():
        expected = model(torch.from_numpy(x))
    expected["heatmap"] = torch.sigmoid(expected["heatmap"])  # the heatmap is exported after its sigmoid
    for name in got:
        np.testing.assert_allclose(got[name], expected[name].numpy(), rtol=0, atol=1e-4, err_msg=name)
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == ["hornet", "bee", "wasp"]  # channel order: category ids sorted
    assert (meta["task"], meta["input_size"], meta["stride"]) == ("detection", "64", "4")
    assert json.loads(meta["mean"]) == DETECTOR_PRE["mean"] and json.loads(meta["std"]) == DETECTOR_PRE["std"]
    assert "after the sigmoid" in meta["outputs"] and "padded with black to 64 x 64" in meta["preprocessing"]


def test_images_given_are_read_with_the_checkpoints_preprocessing(classifier, photos):
    net = export._classifier(classifier)
    x = export._read_images(net, [photos])
    expected = torch.stack([torch.from_numpy(load_square(photos / n, 32, 40)) for n in ("a.png", "b.jpg")])
    torch.testing.assert_close(x, expected.float() / 255, rtol=0, atol=0)
    (photos.parent / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(FrelonError, match="broken.jpg is not a readable image .*: leave it out of --images"):
        export._read_images(net, [photos / "a.png", photos.parent / "broken.jpg"])


@pytest.mark.slow  # a second export: seconds of tracing each
def test_a_check_that_fails_names_the_difference_and_leaves_no_file(classifier, tmp_path, monkeypatch):
    checked = export.max_differences

    def drifted(onnx_file, model, outputs, x):  # PyTorch's logits move by 1e-3 once the file is written
        with torch.no_grad():
            model.model.fc.bias += 1e-3
        return checked(onnx_file, model, outputs, x)

    monkeypatch.setattr(export, "max_differences", drifted)
    code, out, err = _cli(["export", str(classifier), "--onnx", str(tmp_path / "out" / "model.onnx")])
    assert code == 2 and out == ""
    assert "model.onnx was not written: onnxruntime's outputs differ from PyTorch's on 3 images (logits by 0.001" \
           in err and "tolerance 0.0001" in err and "give a larger --tolerance" in err
    assert list((tmp_path / "out").iterdir()) == []  # neither the file nor its temporary copy


def test_a_missing_or_foreign_checkpoint_is_a_clear_error(classifier, tmp_path):
    out = tmp_path / "model.onnx"
    with pytest.raises(FrelonError, match=r"nowhere/model.pt does not exist: give the model.pt of a finished run"):
        export.export_onnx(tmp_path / "nowhere" / "model.pt", out)
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(FrelonError, match=r"notes.pt is not a PyTorch checkpoint \(.*\): give the model.pt"):
        export.export_onnx(tmp_path / "notes.pt", out)
    torch.save(torch.load(classifier, weights_only=True)["model"], tmp_path / "weights.pt")  # export-weights' kind
    with pytest.raises(FrelonError, match=r"weights.pt holds no trained classifier or detector"):
        export.export_onnx(tmp_path / "weights.pt", out)
    code, _, err = _cli(["export", str(tmp_path / "notes.pt"), "--onnx", str(out)])
    assert code == 2 and err.startswith("frelon export: error: ") and "is not a PyTorch checkpoint" in err
    assert not out.exists()
