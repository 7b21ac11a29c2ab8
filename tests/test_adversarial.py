"""The adversarial study: FGSM against its closed form, PGD inside its ball, the patch inside the image,
and the study's files from trained-classifier checkpoints."""

import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from frelon.errors import FrelonError
from frelon.models.resnet import ResNet
from frelon.attacks import (PixelModel, accuracy_under_attack, fgsm, paste, patch_side, pgd, random_positions,
                            train_patch)
from frelon.studies.adversarial import run_study
from frelon.tasks.classify import load_classifier

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
PRE = {"resize": 16, "crop": 16, "mean": MEAN, "std": STD}
MODEL = {"arch": "resnet18", "weights": None, "norm": "batch", "residual": True, "zero_init_residual": False,
         "head_only": False, "num_classes": 2, "weights_path": None}
CLASSES = ["absence", "presence"]


def small_net(seed: int = 0, classes: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, classes)).eval()


def test_fgsm_on_a_linear_model_is_its_closed_form_clipped_to_the_image():
    torch.manual_seed(0)
    n, shape = 6, (3, 4, 4)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(48, 3)).double()
    net = PixelModel(linear, MEAN, STD).double()
    x = torch.rand(n, *shape, dtype=torch.float64)
    x[:, :, 0] = 0.0   # pixels at the edges of [0, 1]: the step must be clipped there
    x[:, :, 1] = 1.0
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    eps = 0.1
    mean, std = (torch.tensor(v, dtype=torch.float64).view(3, 1, 1) for v in (MEAN, STD))
    W, b = linear[1].weight.detach(), linear[1].bias.detach()
    p = torch.softmax(((x - mean) / std).flatten(1) @ W.T + b, 1)
    for targeted, labels in ((False, y), (True, (y + 1) % 3)):
        # d CE / d x = (W^T (softmax - onehot)) / std: the sign of the normalised-space gradient
        grad = ((p - nn.functional.one_hot(labels, 3)) @ W).view(n, *shape) / std
        direction = -grad.sign() if targeted else grad.sign()
        expected = (x + eps * direction).clamp(0, 1)
        assert torch.equal(fgsm(net, x, labels, eps, targeted=targeted), expected)
    assert torch.equal(fgsm(net, x, y, 0.0), x)


@pytest.mark.parametrize("eps", [0.0, 1 / 255, 8 / 255, 0.3])
def test_every_pgd_iterate_stays_in_the_eps_ball_and_in_the_image(eps):
    net = PixelModel(small_net(), MEAN, STD)
    x = torch.rand(5, 3, 12, 12)
    x[0] = 0.0
    x[1] = 1.0
    y = torch.tensor([0, 1, 0, 1, 1])
    seen = []

    def check(step, iterate):
        seen.append(step)
        assert ((iterate <= x + eps) & (iterate >= x - eps)).all()
        assert ((iterate >= 0) & (iterate <= 1)).all()
        if eps == 0:
            assert torch.equal(iterate, x)

    for targeted in (False, True):
        seen.clear()
        out = pgd(net, x, y, eps, steps=4, targeted=targeted, generator=torch.Generator().manual_seed(1),
                  callback=check)
        assert seen == [0, 1, 2, 3, 4]
        again = pgd(net, x, y, eps, steps=4, targeted=targeted, generator=torch.Generator().manual_seed(1))
        assert torch.equal(out, again)   # seeded: the same on every run


def test_pgd_raises_the_loss_and_a_targeted_step_lowers_the_target_loss():
    net = PixelModel(small_net(1), MEAN, STD)
    x, y = torch.rand(8, 3, 12, 12), torch.randint(0, 2, (8,))
    ce = lambda z, labels: nn.functional.cross_entropy(net(z), labels).item()
    assert ce(pgd(net, x, y, 8 / 255, steps=5), y) > ce(x, y)
    assert ce(pgd(net, x, 1 - y, 8 / 255, steps=5, targeted=True), 1 - y) < ce(x, 1 - y)


def test_eps_zero_is_the_clean_accuracy_and_no_attack_beats_it():
    model = small_net(2)
    images = torch.randint(0, 256, (20, 3, 12, 12), dtype=torch.uint8)
    labels = torch.randint(0, 2, (20,))
    with torch.no_grad():
        clean = int((PixelModel(model, MEAN, STD)(images.float() / 255).argmax(1) == labels).sum()) / 20
    rows = accuracy_under_attack(model, MEAN, STD, images, labels, eps_255=[0, 2, 8], steps=3, batch_size=7)
    assert [(r["attack"], r["eps_255"]) for r in rows] == [(a, e) for a in ("fgsm", "pgd") for e in (0, 2, 8)]
    assert all(r["n"] == 20 and r["eps"] == r["eps_255"] / 255 for r in rows)
    assert [r["accuracy"] for r in rows if r["eps_255"] == 0] == [clean, clean]
    assert all(r["accuracy"] <= clean for r in rows)
    # float pixels give the same rows as uint8, and a second run the same numbers
    again = accuracy_under_attack(model, MEAN, STD, images.float() / 255, labels, [0, 2, 8], steps=3, batch_size=7)
    assert again == rows
    with pytest.raises(FrelonError, match="give pixels in \\[0, 1\\]"):
        accuracy_under_attack(model, MEAN, STD, images.float(), labels)


def test_the_patch_stays_inside_the_image_and_changes_only_its_own_pixels():
    images = torch.rand(4, 3, 10, 12)
    patch = torch.full((3, 3, 3), 2.0)   # a value no image pixel has
    tops, lefts = torch.tensor([0, 7, 3, 0]), torch.tensor([0, 9, 4, 9])
    out = paste(images, patch, tops, lefts)
    for i, (t, l) in enumerate(zip(tops.tolist(), lefts.tolist())):
        inside = torch.zeros(10, 12, dtype=torch.bool)
        inside[t:t + 3, l:l + 3] = True
        assert (out[i][:, inside] == 2.0).all()
        assert torch.equal(out[i][:, ~inside], images[i][:, ~inside])
    assert torch.equal(paste(images, patch, 7, 9)[:, :, 7:, 9:], patch.expand(4, 3, 3, 3))
    assert not (images == 2.0).any()   # the input batch is left alone
    for top, left in ((8, 0), (0, 10), (-1, 0)):
        with pytest.raises(FrelonError, match="leaves the 10x12 image"):
            paste(images, patch, top, left)
    g = torch.Generator().manual_seed(0)
    t, l = random_positions(2000, 3, 10, 12, g)
    assert (t.min(), t.max(), l.min(), l.max()) == (0, 7, 0, 9)   # every position that fits, none outside
    assert [patch_side(a, 64, 64) for a in (0.01, 0.02, 0.05, 0.10)] == [6, 9, 14, 20]
    assert patch_side(1e-6, 64, 64) == 1
    with pytest.raises(FrelonError, match="fraction of the image"):
        patch_side(0, 64, 64)


def test_a_trained_patch_is_an_image_and_is_seeded():
    net = PixelModel(small_net(3), MEAN, STD)
    images = torch.randint(0, 256, (6, 3, 12, 12), dtype=torch.uint8)
    a = train_patch(net, images, 1, 4, steps=3, batch=4, generator=torch.Generator().manual_seed(5))
    b = train_patch(net, images, 1, 4, steps=3, batch=4, generator=torch.Generator().manual_seed(5))
    assert a.shape == (3, 4, 4) and torch.equal(a, b) and a.min() >= 0 and a.max() <= 1


def _checkpoint(path, seed, diverged=None):
    torch.manual_seed(seed)
    model = ResNet("resnet18", 2, "batch", True, False).eval()
    torch.save({"model": model.state_dict(), "spec": {"task": "classification", "model": MODEL},
                "classes": [{"id": 0, "name": "absence"}, {"id": 1, "name": "presence"}],
                "preprocessing": PRE, "diverged": diverged}, path)
    return str(path)


@pytest.fixture
def prepared(tmp_path):
    folder = tmp_path / "prepared"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 10), ("test", 8)):
        labels = torch.arange(n) % 2
        torch.save({"images": torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8),
                    "labels": labels, "paths": [f"{CLASSES[i]}/{k}.jpg" for k, i in enumerate(labels.tolist())],
                    "classes": CLASSES, "resize": 16, "crop": 16}, folder / f"{split}.pt")
    return folder


@pytest.mark.slow
def test_the_study_writes_its_tables_and_figures_and_leaves_a_diverged_run_empty(tmp_path, prepared):
    # the first run diverged: the patch and the example go to the first one that did not
    models = {"diverged": _checkpoint(tmp_path / "c.pt", 2, diverged={"step": 3}),
              "pretrained": _checkpoint(tmp_path / "a.pt", 0)}
    out = tmp_path / "adversarial"
    settings = {"eps": [0, 2, 8], "pgd_steps": 2, "patch_areas": [0.05, 0.1], "patch_steps": 2, "patch_batch": 4,
                "max_images": 6}
    result = run_study(models, str(prepared), str(out), settings)
    attacks = pd.read_csv(out / "attacks.csv")
    assert list(attacks.columns) == ["model", "attack", "eps_255", "accuracy", "n"]
    assert len(attacks) == 2 * 2 * 3 and list(attacks.model.unique()) == ["diverged", "pretrained"]
    assert attacks[attacks.model == "diverged"][["accuracy", "n"]].isna().all().all()
    scored = attacks[attacks.model != "diverged"]
    assert (scored.n == 6).all() and scored.accuracy.between(0, 1).all()
    test = torch.load(prepared / "test.pt", weights_only=True)
    model, _, _ = load_classifier(models["pretrained"])
    with torch.no_grad():
        clean = int((PixelModel(model, MEAN, STD)(test["images"][:6].float() / 255).argmax(1)
                     == test["labels"][:6]).sum()) / 6
    assert (scored[scored.eps_255 == 0].accuracy == clean).all() and (scored.accuracy <= clean).all()
    patch = pd.read_csv(out / "patch.csv")
    assert list(patch.columns) == ["model", "area", "side_px", "success", "noise_success", "n"]
    assert list(patch.side_px) == [4, 5] and (patch.model == "pretrained").all() and (patch.n == 3).all()
    assert patch[["success", "noise_success"]].apply(lambda c: c.between(0, 1)).all().all()
    for name in ("attacks.md", "patch.md"):
        assert (out / name).read_text().startswith("| model")
    for name in ("example.png", "patch.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG"
    assert result["patch_model"] == "pretrained" and result["example"]["model"] == "pretrained"
    assert not list(out.glob(".*.tmp"))   # atomic writes leave no temporary file behind

    # the patch on a diverged model: empty rows and a figure that says why
    run_study(models, str(prepared), str(out), {**settings, "eps": [0], "patch_model": "diverged"})
    assert pd.read_csv(out / "patch.csv")[["success", "noise_success", "n"]].isna().all().all()


def test_the_study_refuses_a_model_of_another_preprocessing_or_a_wrong_setting(tmp_path, prepared):
    model = {"a": _checkpoint(tmp_path / "a.pt", 0)}
    with pytest.raises(FrelonError, match="is missing: train the run first"):
        run_study({**model, "b": str(tmp_path / "none.pt")}, str(prepared), str(tmp_path / "out"), {})
    blob = torch.load(prepared / "test.pt", weights_only=True)
    torch.save({**blob, "resize": 20}, prepared / "test.pt")
    with pytest.raises(FrelonError, match="was prepared with .* but .* expects"):
        run_study(model, str(prepared), str(tmp_path / "out"), {"patch_steps": 1})
    with pytest.raises(FrelonError, match="unknown adversarial setting"):
        run_study(model, str(prepared), str(tmp_path / "out"), {"pgd_step": 3})
    with pytest.raises(FrelonError, match="patch_target 'wasp' is not a class"):
        run_study(model, str(prepared), str(tmp_path / "out"), {"patch_target": "wasp"})
    with pytest.raises(FrelonError, match="fraction of the image"):
        run_study(model, str(prepared), str(tmp_path / "out"), {"patch_areas": [0.05, 2]})
    assert not (tmp_path / "out").exists()   # refused before any work, nothing half-written


class Brightness(nn.Module):
    """Says class 1 as the mean normalised pixel rises above that of a 0.3 grey: a patch learns to be white."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey = (0.3 - torch.tensor(MEAN)) / torch.tensor(STD)
        level = (x - grey[:, None, None]).mean((1, 2, 3)) * 50
        return torch.stack([torch.zeros_like(level), level], 1)


def test_the_patch_study_trains_one_seeded_patch_per_area_and_scores_it_against_noise():
    from frelon.attacks import patch_study

    g = torch.Generator().manual_seed(0)
    dark = lambda n: torch.randint(0, 80, (n, 3, 20, 20), generator=g, dtype=torch.uint8)  # noqa: E731 (class 0)
    train, test = dark(12), dark(10)
    rows, patches = patch_study(Brightness(), MEAN, STD, train, test, target=1, areas=(0.04, 0.25), steps=20,
                                lr=0.2, batch=4, seed=3)
    assert [(r["area"], r["side_px"], r["n"]) for r in rows] == [(0.04, 4, 10), (0.25, 10, 10)]
    assert [tuple(patches[a].shape) for a in (0.04, 0.25)] == [(3, 4, 4), (3, 10, 10)]
    big = rows[1]
    assert big["success"] == 1.0 and big["noise_success"] == 0.0  # a white quarter turns dark images to class 1
    assert patches[0.25].min() >= 0 and patches[0.25].max() <= 1 and patches[0.25].mean() > 0.9
    again, again_patches = patch_study(Brightness(), MEAN, STD, train, test, target=1, areas=(0.25,), steps=20,
                                       lr=0.2, batch=4, seed=3)
    assert torch.equal(again_patches[0.25], patches[0.25]) and again == [big]  # seeded per area, not per list
    _, untrained = patch_study(Brightness(), MEAN, STD, train, test, target=1, areas=(0.25,), steps=0, seed=3)
    assert 0.3 < untrained[0.25].mean() < 0.7  # no step: the uniform random start
    _, other = patch_study(Brightness(), MEAN, STD, train, test, target=1, areas=(0.25,), steps=0, seed=4)
    assert not torch.equal(other[0.25], untrained[0.25])  # another seed, another start
    _, slow = patch_study(Brightness(), MEAN, STD, train, test, target=1, areas=(0.25,), steps=2, lr=0.01,
                          batch=4, seed=3)
    assert (slow[0.25] - untrained[0.25]).abs().max() == pytest.approx(0.02, abs=1e-3)  # two Adam steps of lr
    rows, _ = patch_study(Brightness(), MEAN, STD, train, test, target=0, areas=(0.25,), steps=1, seed=3)
    assert rows[0]["success"] == 1.0  # already class 0: the target is what is counted


def test_a_patch_trained_without_an_image_is_refused():
    with pytest.raises(FrelonError, match="no training image to optimise the patch on: the train split has none "
                                          "of the source class; check patch_source"):
        train_patch(Brightness(), torch.zeros(0, 3, 8, 8, dtype=torch.uint8), 1, 2)


def reference_sweep(net, pixels, labels, eps_255, steps, step_size, seed):
    """accuracy_under_attack's numbers from the public attacks on the whole batch at once: FGSM's image, and
    PGD fooling an image when any of its iterates (its random start included) is misclassified, from the
    starts the sweep draws (one generator per eps, seeded from the eps)."""
    from frelon.attacks import fgsm
    from frelon.data.augment import sample_seed

    with torch.no_grad():
        right = net(pixels).argmax(1) == labels
    accuracy = {}
    for e in eps_255:
        fooled = {"fgsm": torch.zeros(len(labels), dtype=torch.bool), "pgd": torch.zeros(len(labels), dtype=torch.bool)}
        if e > 0:
            with torch.no_grad():
                fooled["fgsm"] = net(fgsm(net, pixels, labels, e / 255)).argmax(1) != labels
            seen = []
            generator = torch.Generator().manual_seed(sample_seed(seed, round(e * 1000)))
            pgd(net, pixels, labels, e / 255, steps, step_size, generator=generator,
                callback=lambda step, x: seen.append(x.detach()))
            assert len(seen) == steps + 1
            with torch.no_grad():
                fooled["pgd"] = torch.stack([net(x).argmax(1) != labels for x in seen]).any(0)
        for attack in ("fgsm", "pgd"):
            accuracy[attack, e] = float((right & ~fooled[attack]).sum()) / len(labels)
    return accuracy


@pytest.mark.parametrize("step_size", [None, 3 / 255])
def test_the_sweep_scores_each_attack_as_the_attacks_themselves_do(step_size):
    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 2)).eval()  # margins spread: each radius fools more
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (24, 3, 12, 12), generator=g, dtype=torch.uint8)
    net = PixelModel(model, MEAN, STD).eval()
    with torch.no_grad():
        labels = net(images.float() / 255).argmax(1)  # every image right, clean
    labels[:3] = 1 - labels[:3]  # but three
    eps = [0, 1, 2, 8]
    rows = accuracy_under_attack(model, MEAN, STD, images, labels, eps, steps=4, step_size=step_size, seed=7,
                                 batch_size=64)
    expected = reference_sweep(net, images.float() / 255, labels, eps, 4, step_size, 7)
    got = {(r["attack"], r["eps_255"]): r["accuracy"] for r in rows}
    assert got == expected
    assert got["pgd", 0] == got["fgsm", 0] == 21 / 24 and got["pgd", 8] < got["pgd", 1] < 21 / 24
    assert len({v for k, v in got.items() if k[1] > 0}) > 2  # the radii tell apart
    other = accuracy_under_attack(model, MEAN, STD, images, labels, eps, steps=4, step_size=step_size, seed=8)
    assert {(r["attack"], r["eps_255"]): r["accuracy"] for r in other} == reference_sweep(
        net, images.float() / 255, labels, eps, 4, step_size, 8)


def tanh_net() -> nn.Module:
    """Small enough to attack 200 images in a second, curved enough that PGD finds what FGSM misses."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                          nn.Linear(32, 2)).eval()
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(4)
    return model


@pytest.mark.parametrize("steps, step_size", [(5, None), (5, 1.5 / 255), (1, None)])
def test_each_image_is_fooled_in_the_sweep_exactly_when_the_attacks_fool_it_batch_by_batch(steps, step_size):
    from frelon.attacks import fgsm, sweep
    from frelon.data.augment import sample_seed

    net = PixelModel(tanh_net(), MEAN, STD).eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (200, 3, 8, 8), generator=g, dtype=torch.uint8)
    pixels = images.float() / 255
    with torch.no_grad():
        labels = net(pixels).argmax(1)
    labels[::7] = 1 - labels[::7]  # some wrong before any attack
    eps_255, seed, batch = [0, 1, 2, 4, 8], 11, 64
    rows, per_image = sweep(net, images, labels, eps_255, steps, step_size, seed, batch, torch.device("cpu"))
    with torch.no_grad():
        right = net(pixels).argmax(1) == labels
    assert torch.equal(per_image["correct"], right)
    for e in eps_255:
        eps, generator = e / 255, torch.Generator().manual_seed(sample_seed(seed, round(e * 1000)))
        fooled = {"fgsm": torch.zeros(200, dtype=torch.bool), "pgd": torch.zeros(200, dtype=torch.bool)}
        for begin in range(0, 200, batch):  # the sweep's batches, each drawing its starts in turn
            x, y = pixels[begin:begin + batch], labels[begin:begin + batch]
            seen = []
            pgd(net, x, y, eps, steps, step_size, generator=generator, callback=lambda s, a: seen.append(a.detach()))
            if e == 0:
                continue
            with torch.no_grad():
                fooled["fgsm"][begin:begin + batch] = net(fgsm(net, x, y, eps)).argmax(1) != y
                fooled["pgd"][begin:begin + batch] = torch.stack([net(a).argmax(1) != y for a in seen]).any(0)
        for attack in ("fgsm", "pgd"):
            expected = right & fooled[attack]
            assert torch.equal(per_image["fooled"][attack, e], expected), (attack, e)
            row = next(r for r in rows if (r["attack"], r["eps_255"]) == (attack, e))
            assert row == {"attack": attack, "eps_255": e, "eps": eps, "n": 200,
                           "accuracy": float((right & ~fooled[attack]).sum()) / 200}
    accuracy = {(r["attack"], r["eps_255"]): r["accuracy"] for r in rows}
    assert accuracy["pgd", 8] <= accuracy["fgsm", 8] < accuracy["fgsm", 1] < accuracy["fgsm", 0]


def test_the_attacks_leave_alone_the_pixels_the_model_does_not_see():
    """A zero gradient has sign 0: FGSM and PGD steps move nothing there (PGD's random start still does)."""
    from frelon.attacks import fgsm

    torch.manual_seed(0)
    red_only = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.LazyLinear(2))
    with torch.no_grad():
        red_only[0].weight[:, 1:] = 0  # green and blue never reach the output
    red_only(torch.zeros(1, 3, 8, 8))
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 0, 1])
    moved = fgsm(red_only, x, y, 4 / 255)
    assert torch.equal(moved[:, 1:], x[:, 1:]) and not torch.equal(moved[:, 0], x[:, 0])
    stepped = pgd(red_only, x, y, 4 / 255, steps=3, random_start=False)
    assert torch.equal(stepped[:, 1:], x[:, 1:]) and not torch.equal(stepped[:, 0], x[:, 0])


def test_defaults_are_the_documented_ones():
    net = PixelModel(small_net(3), MEAN, STD)
    x, y = torch.rand(6, 3, 12, 12), torch.randint(0, 2, (6,))
    assert torch.equal(pgd(net, x, y, 4 / 255), pgd(net, x, y, 4 / 255, 10, 2.5 * (4 / 255) / 10,
                                                    generator=torch.Generator().manual_seed(0)))
    images = torch.randint(0, 256, (6, 3, 12, 12), dtype=torch.uint8)
    assert torch.equal(train_patch(net, images, 1, 3, steps=2), train_patch(
        net, images, 1, 3, 2, 0.05, 16, torch.Generator().manual_seed(0)))
    assert torch.equal(train_patch(net, images, 1, 3, steps=100, lr=0.05), train_patch(net, images, 1, 3))
    model = tanh_net()
    images = torch.randint(0, 256, (70, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    labels = torch.randint(0, 2, (70,), generator=torch.Generator().manual_seed(3))
    assert accuracy_under_attack(model, MEAN, STD, images, labels) == accuracy_under_attack(
        model, MEAN, STD, images, labels, (0, 1, 2, 4, 8), 10, None, 0, 64, "cpu")


def test_wrong_radii_positions_and_pixels_are_named():
    from frelon.attacks import eps_list, to_pixels

    for values in ([], [1, -1], [True], ["2"]):
        with pytest.raises(FrelonError, match=r"give a list of non-negative radii in 1/255 units, e\.g\. \[0, 1, 2, 4, 8\]"):
            eps_list(values)
    assert eps_list((0, 2.5)) == [0, 2.5]
    with pytest.raises(FrelonError, match=r"^eps -0\.1: give a non-negative radius, in pixels of \[0, 1\]"):
        pgd(small_net(), torch.rand(1, 3, 4, 4), torch.tensor([0]), -0.1)
    with pytest.raises(FrelonError, match=r"^pgd steps -1: give 0 \(random start only\) or more$"):
        pgd(small_net(), torch.rand(1, 3, 4, 4), torch.tensor([0]), 0.1, steps=-1)
    assert pgd(small_net(), torch.zeros(1, 3, 4, 4), torch.tensor([0]), 0.1, steps=0).abs().max() <= 0.1
    with pytest.raises(FrelonError, match=r"^float images range over \[0, 1\.5\]"):
        to_pixels(torch.tensor([0.0, 1.5]).view(1, 2, 1, 1))
    with pytest.raises(FrelonError, match=r"^images of dtype torch\.int32: give uint8"):
        to_pixels(torch.zeros(1, 3, 2, 2, dtype=torch.int32))
    images, patch = torch.rand(3, 3, 10, 12), torch.zeros(3, 4, 4)
    with pytest.raises(FrelonError, match=r"^2 tops and 1 lefts for 3 images: give one position or one per image$"):
        paste(images, patch, [0, 1], 0)
    with pytest.raises(FrelonError, match=r"^a 4 px patch at \(top 7, left 0\) leaves the 10x12 image: give 0 <= top "
                                          r"<= 6 and 0 <= left <= 8$"):
        paste(images, patch, 7, 0)
    assert patch_side(1.0, 8, 8) == 8  # the whole image
    with pytest.raises(FrelonError, match=r"^a patch of 100% of a 8x16 image is 11 px wide and does not fit: use a "
                                          r"smaller area$"):
        patch_side(1.0, 8, 16)
    with pytest.raises(FrelonError, match=r"^patch area 1\.5: give a fraction of the image in \(0, 1\]"):
        patch_side(1.5, 8, 8)


def test_the_patch_study_uses_one_generator_per_area_for_training_then_scoring():
    from frelon.attacks import patch_study, patch_success
    from frelon.data.augment import sample_seed

    net = PixelModel(Brightness(), MEAN, STD)
    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 120, (9, 3, 20, 20), generator=g, dtype=torch.uint8)
    test = torch.randint(0, 120, (7, 3, 20, 20), generator=g, dtype=torch.uint8)
    rows, patches = patch_study(Brightness(), MEAN, STD, train, test, 1, areas=(0.09,), steps=3, lr=0.1, batch=5,
                                seed=2, batch_size=4)
    generator = torch.Generator().manual_seed(sample_seed(2, round(0.09 * 1e6)))
    patch = train_patch(net, train, 1, 6, 3, 0.1, 5, generator)
    success, noise = patch_success(net, test, patch, 1, generator, 4)
    assert torch.equal(patches[0.09], patch)
    assert rows == [{"area": 0.09, "side_px": 6, "success": success, "noise_success": noise, "n": 7}]


def test_a_sweep_of_no_image_has_no_accuracy():
    from frelon.attacks import sweep

    rows, _ = sweep(PixelModel(small_net(), MEAN, STD), torch.zeros(0, 3, 8, 8, dtype=torch.uint8),
                    torch.zeros(0, dtype=torch.int64), [0, 2], 2, None, 0, 8, torch.device("cpu"))
    assert [(r["attack"], r["eps_255"], r["accuracy"], r["n"]) for r in rows] == [
        ("fgsm", 0, None, 0), ("fgsm", 2, None, 0), ("pgd", 0, None, 0), ("pgd", 2, None, 0)]


def test_a_radius_of_one_255th_is_one_255th():
    """A linear model and an image whose margin FGSM crosses at 1/255 but not at 1/256 of the pixel range."""
    from frelon.attacks import sweep

    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 2)).eval()
    direction = torch.where(torch.arange(48) % 2 == 0, 1.0, -1.0)  # |w|_1 = 48
    margin = 48 * (1 / 255 + 1 / 256) / 2
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.zeros(48), direction]))
        model[1].bias.copy_(torch.tensor([margin, 0.0]))  # at grey 0.5, class 0 by the margin
    net = PixelModel(model, [0.5, 0.5, 0.5], [1.0, 1.0, 1.0])
    grey = torch.full((1, 3, 4, 4), 0.5)
    rows, per_image = sweep(net, grey, torch.tensor([0]), [1], 1, None, 0, 8, torch.device("cpu"))
    assert per_image["fooled"]["fgsm", 1].tolist() == [True]
    rows, per_image = sweep(net, grey, torch.tensor([0]), [255 / 256], 1, None, 0, 8, torch.device("cpu"))
    assert per_image["fooled"]["fgsm", 255 / 256].tolist() == [False]


def test_the_study_functions_hand_on_their_documented_settings(monkeypatch):
    from frelon import attacks
    from frelon.data.augment import sample_seed

    seen = {}
    monkeypatch.setattr(attacks, "sweep", lambda *args: seen.setdefault("sweep", args) and ([], {}))
    attacks.accuracy_under_attack(small_net(), MEAN, STD, torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.int64))
    net, _, _, eps, steps, step_size, seed, batch, device = seen["sweep"]
    assert isinstance(net, PixelModel) and not net.training
    assert (list(eps), steps, step_size, seed, batch, device) == ([0, 1, 2, 4, 8], 10, None, 0, 64, torch.device("cpu"))

    def train(net, images, target, side, steps, lr, batch, generator, device):
        seen["train"] = (steps, lr, batch, device, generator.get_state())
        return torch.zeros(3, side, side)

    def score(net, images, patch, target, generator, batch_size, device):
        seen["score"] = (generator, batch_size, device)
        return 0.5, 0.25

    monkeypatch.setattr(attacks, "train_patch", train)
    monkeypatch.setattr(attacks, "patch_success", score)
    rows, _ = attacks.patch_study(small_net(), MEAN, STD, torch.zeros(2, 3, 10, 10), torch.zeros(3, 3, 10, 10), 1,
                                  areas=(0.7,), seed=5)
    expected = torch.Generator().manual_seed(sample_seed(5, 700000)).get_state()
    assert seen["train"][:4] == (100, 0.05, 16, "cpu") and torch.equal(seen["train"][4], expected)
    assert isinstance(seen["score"][0], torch.Generator) and seen["score"][1:] == (64, "cpu")
    assert rows == [{"area": 0.7, "side_px": 8, "success": 0.5, "noise_success": 0.25, "n": 3}]
    attacks.patch_study(small_net(), MEAN, STD, torch.zeros(2, 3, 10, 10), torch.zeros(3, 3, 10, 10), 1, areas=(0.7,))
    assert torch.equal(seen["train"][4], torch.Generator().manual_seed(sample_seed(0, 700000)).get_state())  # seed 0


def test_a_patch_is_trained_on_batches_of_sixteen_by_default():
    net = PixelModel(small_net(3), MEAN, STD)
    images = torch.randint(0, 256, (40, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    assert torch.equal(train_patch(net, images, 1, 3, steps=2), train_patch(
        net, images, 1, 3, 2, 0.05, 16, torch.Generator().manual_seed(0)))
    assert not torch.equal(train_patch(net, images, 1, 3, steps=2), train_patch(
        net, images, 1, 3, 2, 0.05, 17, torch.Generator().manual_seed(0)))


class Dormant(nn.Module):
    """Class 1 only once the pixels' sum passes a threshold (a ReLU): below it every gradient is exactly 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = x.flatten(1).sum(1)
        return torch.stack([torch.full_like(total, 0.5), 100 * torch.relu(total - 0.5 * 48 - 1.0)], 1)


def test_a_zero_gradient_moves_no_pixel_so_a_dormant_network_is_not_fooled():
    """sign(0) is 0: neither attack moves a pixel whose gradient is 0, however close the threshold (all 48
    pixels pushed by 8/255 would cross it)."""
    from frelon.attacks import sweep

    net = PixelModel(Dormant(), [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    grey = torch.full((1, 3, 4, 4), 0.5)
    _, per_image = sweep(net, grey, torch.tensor([0]), [8], 3, None, 0, 8, torch.device("cpu"))
    assert per_image["correct"].tolist() == [True]
    assert per_image["fooled"]["fgsm", 8].tolist() == [False] and per_image["fooled"]["pgd", 8].tolist() == [False]
    with torch.no_grad():
        assert net(grey + 8 / 255).argmax(1).tolist() == [1]  # what moving every pixel to the edge would do
