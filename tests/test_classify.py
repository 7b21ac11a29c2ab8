"""`frelon classify`: a trained classifier on a folder of photos, as a hornet trap's camera would send them."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import run
from frelon.data.folder import load_square
from frelon.errors import FrelonError
from frelon.models.resnet import ResNet
from frelon.tasks.classify import classify

PRE = {"resize": 40, "crop": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
MODEL = {"arch": "resnet18", "weights": None, "norm": "batch", "residual": True, "zero_init_residual": False,
         "head_only": False, "num_classes": 2, "weights_path": None}


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = ResNet("resnet18", 2, "batch", True, False).eval()
    path = tmp_path / "model.pt"
    torch.save({"model": model.state_dict(), "spec": {"task": "classification", "model": MODEL},
                "classes": [{"id": 0, "name": "absence"}, {"id": 1, "name": "presence"}],
                "preprocessing": PRE, "diverged": None}, path)
    return path, model


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "trap"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (60, 45)), ("b.jpg", (50, 70))):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / name)
    (folder / "c.jpg").write_bytes(b"not a jpeg")   # a truncated upload
    (folder / "notes.txt").write_text("not an image, not listed")
    return folder


def test_a_folder_gets_the_trained_preprocessing_and_its_unreadable_file_is_listed_not_guessed(checkpoint, photos):
    path, model = checkpoint
    table = classify(path, [photos])
    assert list(table["file"]) == [str(photos / n) for n in ("a.png", "b.jpg", "c.jpg")]
    x = torch.stack([torch.from_numpy(load_square(photos / n, 32, 40)) for n in ("a.png", "b.jpg")]).float() / 255
    x = (x - torch.tensor(PRE["mean"]).view(1, 3, 1, 1)) / torch.tensor(PRE["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model(x).softmax(1)
    got = torch.tensor(table[["p_absence", "p_presence"]].iloc[:2].to_numpy(), dtype=torch.float32)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert list(table["predicted"].iloc[:2]) == [["absence", "presence"][i] for i in expected.argmax(1)]
    assert table["error"].iloc[:2].isna().all() and table["error"].iloc[2].startswith("unreadable")
    assert table.iloc[2][["predicted", "probability", "p_absence", "p_presence"]].isna().all()


@pytest.mark.slow  # a real training or several Snakemake runs: seconds
def test_the_command_writes_the_csv_and_counts_what_it_could_not_read(checkpoint, photos, tmp_path):
    out = tmp_path / "predictions.csv"
    proc = run(["frelon", "classify", str(checkpoint[0]), str(photos), "--out", str(out)], cwd=tmp_path)
    assert f"2 images classified, 1 unreadable ({photos / 'c.jpg'})" in proc.stdout
    assert len(pd.read_csv(out)) == 3


def test_a_detector_or_a_folder_of_nothing_readable_is_a_clear_error(checkpoint, photos, tmp_path):
    state = torch.load(checkpoint[0], weights_only=True)
    state["spec"]["task"] = "detection"
    torch.save(state, tmp_path / "detector.pt")
    with pytest.raises(FrelonError, match="not a classifier: give the model.pt of a classification run"):
        classify(tmp_path / "detector.pt", [photos])
    with pytest.raises(FrelonError, match="none of the 1 files could be read as an image"):
        classify(checkpoint[0], [photos / "c.jpg"])
