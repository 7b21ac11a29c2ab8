"""Online augmentation of the train split: one transform at a time, seeded per (seed, epoch, index)."""

import pytest
import torch
from torch.utils.data import DataLoader, default_collate
from PIL import Image

from frelon.data.augment import ORDER
from frelon.report.augmentation import preview_online
from frelon.data.dataset import Batch, CachedSplit, RawBatch, collate, sample_seed
from frelon.errors import FrelonError
from frelon.tasks.classification import ClassificationTask
from frelon.train import engine

PRE = {"resize": 32, "crop": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
SETTINGS = [[], *[[name] for name in ORDER], list(ORDER)]


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """A cached split of 12 smooth 32 px images (a gradient and a blob), as `prepare` writes it."""
    path = tmp_path_factory.mktemp("split") / "train.pt"
    ramp = torch.linspace(0, 1, 32)
    images = []
    for i in range(12):
        blob = ((ramp - (i + 4) / 20)[:, None] ** 2 + (ramp - 0.5)[None, :] ** 2 < 0.04).float()
        image = torch.stack([ramp[None, :].expand(32, 32), blob, ramp[:, None].expand(32, 32) * (i / 12)])
        images.append((image * 255).round().byte())
    torch.save({"images": torch.stack(images), "labels": torch.arange(12) % 2, "classes": ["a", "b"],
                "resize": 32, "crop": 32}, path)
    return path


def batch(split, augment, epoch=0, order=range(12), seed=0, options=None) -> torch.Tensor:
    dataset = CachedSplit(split, PRE, augment, options, seed)
    dataset.set_epoch(epoch)
    out = {i: dataset[i][0] for i in order}
    return torch.stack([out[i] for i in range(12)])


def test_each_transform_changes_the_images_and_none_leaves_them(split):
    plain = batch(split, [])
    blob = torch.load(split, weights_only=True)
    mean, std = torch.tensor(PRE["mean"]).view(3, 1, 1), torch.tensor(PRE["std"]).view(3, 1, 1)
    assert torch.equal(plain, (blob["images"].float() / 255 - mean) / std)
    for augment in SETTINGS[1:]:
        x = batch(split, augment)
        assert x.shape == plain.shape and torch.isfinite(x).all()
        assert not torch.equal(x, plain), augment


def test_draws_depend_on_seed_epoch_and_index_only(split):
    first = batch(split, ORDER)
    assert torch.equal(first, batch(split, list(reversed(ORDER)), order=reversed(range(12))))  # fresh object
    dataset = CachedSplit(split, PRE, ORDER)
    assert torch.equal(dataset[5][0], dataset[5][0]) and torch.equal(dataset[5][0], first[5])
    assert not torch.equal(first, batch(split, ORDER, epoch=1))
    assert not torch.equal(first, batch(split, ORDER, seed=1))


def test_mirror_flips_exactly_what_the_flip_only_implementation_flipped(split):
    plain = batch(split, [])
    for epoch in range(3):
        old = []
        for i in range(12):  # the formula of CachedSplit(flip=True) before online augmentation
            g = torch.Generator().manual_seed(sample_seed(0, epoch, i))
            old.append(plain[i].flip(-1) if torch.rand((), generator=g) < 0.5 else plain[i])
        assert torch.equal(batch(split, ["mirror"], epoch), torch.stack(old))


def test_options_reach_the_transforms(split):
    plain = batch(split, [])
    assert torch.equal(batch(split, ["mirror"], options={"flip": 0.0}), plain)
    erased = batch(split, ["erasing"], options={"erasing": 1.0})
    assert all(not torch.equal(a, b) for a, b in zip(erased, plain))


def test_unknown_names_and_settings_are_refused(split):
    with pytest.raises(FrelonError, match=r"augmentation \['flip'\]: unknown; choose from \['mirror', 'affine'"):
        CachedSplit(split, PRE, ["mirror", "flip"])
    with pytest.raises(FrelonError, match=r"give a list of names, e.g. \['mirror'\]"):
        CachedSplit(split, PRE, "mirror")
    with pytest.raises(FrelonError, match=r"augment_options \['sigma'\]: unknown; the settings are \["):
        CachedSplit(split, PRE, ["noise"], {"sigma": 0.1})


def test_the_task_augments_train_only_and_defaults_to_mirror(split):
    spec = {"model": {"num_classes": 2}, "seed": 0, "data": {"dir": str(split.parent), "preprocessing": PRE}}
    task = ClassificationTask(spec)
    mirror = task.dataset("train", train=True)  # absent key: ["mirror"], drawn without torchvision
    assert mirror.augment == ["mirror"] and mirror.flip == 0.5 and mirror.drawer is None
    spec["data"].update(augment=["noise", "colour"], augment_options={"noise_sigma": 0.1})
    train = task.dataset("train", train=True)
    assert train.augment == ["colour", "noise"] and train.draws([0, 1]).noise_sigma == 0.1
    evaluation = task.dataset("train")  # what val and test get
    assert evaluation.augment == [] and evaluation.drawer is None
    evaluation.set_epoch(3)
    assert torch.equal(evaluation[0][0], batch(split, [])[0])


def test_the_preview_shows_one_row_per_setting(split, tmp_path):
    preview_online(split, PRE, SETTINGS, tmp_path / "fig" / "preview.png", n=4)
    image = Image.open(tmp_path / "fig" / "preview.png")
    assert image.format == "PNG" and image.height == 2 + len(SETTINGS) * (32 + 2)
    assert image.width > 2 + 4 * (32 + 2)  # and a column of labels
    assert [p.name for p in (tmp_path / "fig").iterdir()] == ["preview.png"]


@pytest.mark.parametrize("augment", SETTINGS)
def test_a_whole_batch_equals_its_samples_stacked(split, augment):
    dataset = CachedSplit(split, PRE, augment, seed=3)
    dataset.set_epoch(2)
    order = [5, 0, 11, 11, 7]
    built = collate(dataset.__getitems__(order))
    assert isinstance(dataset.__getitems__(order), Batch)
    images, labels = default_collate([dataset[i] for i in order])
    assert torch.equal(built[1], labels)
    if set(augment) <= {"mirror"}:
        assert torch.equal(built[0], images)  # bit for bit: the float path of before
    else:
        assert torch.allclose(built[0], images, atol=1e-5)


@pytest.mark.parametrize("augment", SETTINGS)
def test_a_uint8_batch_finished_where_it_trains_equals_the_float_batch(split, augment):
    """The training loader hands uint8 images and each sample's draws (a quarter of float32's bytes); the
    engine augments, scales and normalises them on the device, to the batch the host makes (bit for bit
    with mirror alone or nothing)."""
    floats, raw = CachedSplit(split, PRE, augment, seed=3), CachedSplit(split, PRE, augment, seed=3, raw=True)
    order = [5, 0, 11, 11, 7]
    for dataset in (floats, raw):
        dataset.set_epoch(2)
    batch = collate(raw.__getitems__(order))
    assert isinstance(batch, RawBatch) and batch.images.dtype == torch.uint8
    assert (batch.draws.mirror is not None and bool(batch.draws.mirror.any())) == ("mirror" in augment)
    images, labels = batch.finish()
    expected = collate(floats.__getitems__(order))
    exact = set(augment) <= {"mirror"}
    same = torch.equal if exact else lambda a, b: torch.allclose(a, b, atol=1e-5)
    assert same(images, expected[0]) and torch.equal(labels, expected[1])
    channels_last = engine.move(batch, torch.device("cpu"), channels_last=True).finish()[0]
    assert same(channels_last, expected[0])
    loader = DataLoader(raw, 4, num_workers=1, collate_fn=collate)  # through a worker's shared memory
    assert all(isinstance(b, RawBatch) for b in loader)


def test_loader_workers_kept_across_epochs_see_each_epoch(split):
    dataset = CachedSplit(split, PRE, ["mirror"])
    epochs = []
    for workers in (0, 2):
        loader = DataLoader(dataset, 4, num_workers=workers, persistent_workers=workers > 0, collate_fn=collate)
        seen = []
        for epoch in range(3):
            dataset.set_epoch(epoch)
            seen.append(torch.cat([images for images, _ in loader]))
        epochs.append(seen)
    assert all(torch.equal(a, b) for a, b in zip(*epochs))
    assert not torch.equal(epochs[1][0], epochs[1][1])  # the epochs' flips differ
