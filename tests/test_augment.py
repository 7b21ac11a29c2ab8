"""Offline augmentation of a prepared train split: seeded copies, untouched evaluation splits."""

import json

import pytest
import torch

from engine_fixtures import prepared_hornet
from frelon.data.augment import augment_split
from frelon.errors import FrelonError


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepared_hornet(tmp_path_factory.mktemp("hornet"), size=48)


def test_copies_follow_each_original_and_val_test_are_untouched(prepared, tmp_path):
    report = augment_split(prepared, tmp_path / "aug", {"multiplier": 3}, seed=0)
    original = torch.load(prepared / "train.pt", weights_only=True)
    augmented = torch.load(tmp_path / "aug" / "train.pt", weights_only=True)
    n = len(original["labels"])
    assert report["train_images"] == len(augmented["labels"]) == 3 * n
    assert torch.equal(augmented["images"][0::3], original["images"])         # originals kept
    assert torch.equal(augmented["labels"][1::3], original["labels"])         # copies keep their label
    assert torch.equal(augmented["origin"], torch.arange(n).repeat_interleave(3))
    assert not torch.equal(augmented["images"][1::3], original["images"])     # copies differ
    assert augmented["images"].dtype == torch.uint8 and augmented["images"].shape[1:] == original["images"].shape[1:]
    for split in ("val", "test"):
        assert (tmp_path / "aug" / f"{split}.pt").read_bytes() == (prepared / f"{split}.pt").read_bytes()
    assert (tmp_path / "aug" / "preview.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "aug" / "report.json").read_text())["multiplier"] == 3


def test_the_same_seed_gives_the_same_set_and_another_seed_another(prepared, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        augment_split(prepared, tmp_path / name, {"multiplier": 2}, seed=seed)
    load = lambda name: torch.load(tmp_path / name / "train.pt", weights_only=True)["images"]  # noqa: E731
    assert torch.equal(load("a"), load("b")) and not torch.equal(load("a"), load("c"))


def test_an_unprepared_folder_is_named(tmp_path):
    with pytest.raises(FrelonError, match="has no train.pt: prepare the dataset first"):
        augment_split(tmp_path, tmp_path / "aug", {}, seed=0)
    assert not (tmp_path / "aug").exists()


def test_the_offline_pipeline_is_every_shared_transform_in_order():
    from frelon.data.augment import DEFAULTS, ORDER, pipeline, transforms

    steps = [type(t).__name__ for t in pipeline({}).transforms]
    assert steps == ["ToDtype", *(type(t).__name__ for t in transforms(ORDER, DEFAULTS)), "ToDtype"]
    assert steps[1:-1] == ["RandomHorizontalFlip", "RandomAffine", "ColorJitter", "GaussianNoise", "RandomErasing"]
