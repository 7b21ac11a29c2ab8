"""Batched online augmentation against torchvision's transforms, sample by sample, with the same draws."""

import pytest
import torch

from frelon.data import batch_augment
from frelon.data.augment import ONLINE_DEFAULTS, ORDER, transforms
from frelon.data.batch_augment import Drawer

H, W = 40, 48  # not square: height and width must not be swapped anywhere
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def images():
    """Smooth colour images with edges (hue and nearest sampling see real structure), as uint8."""
    g = torch.Generator().manual_seed(0)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    out = []
    for k in range(10):
        phase = torch.rand(3, 1, 1, generator=g) * 6
        image = 0.5 + 0.5 * torch.sin(phase + torch.stack([xs * 5, ys * 4, (xs + ys) * 3]) * (1 + k / 5))
        image[:, 10:20, 15 + k:30 + k] = torch.rand(3, 1, 1, generator=g)
        out.append((image * 255).round().byte())
    return torch.stack(out)


def reference(images, names, options, seeds):
    """torchvision's v2 transforms, one sample at a time, each from the global generator seeded with its
    seed (the per-sample implementation); noise is left to the batched code's own generator."""
    chain = [t for t in transforms([n for n in names if n != "noise"], options)]
    out = []
    for image, seed in zip(images, seeds):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            x = image.float() / 255
            for t in chain:
                x = t(x)
        out.append(x)
    return torch.stack(out)


def batched(images, names, options, seeds, noise_seeds=None):
    """The batched transforms, on the images' device (the draws moved there, as the engine moves a batch)."""
    from frelon.train.engine import move

    draws = Drawer(names, options, H, W).batch(seeds, noise_seeds or [s + 1 for s in seeds])
    return batch_augment.apply(images, move(draws, images.device, channels_last=False))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("names", [["mirror"], ["affine"], ["colour"], ["erasing"], ["mirror", "affine"],
                                   ["mirror", "affine", "colour", "erasing"]])
def test_a_batch_equals_torchvisions_transforms_sample_by_sample(images, names, device):
    options = {**ONLINE_DEFAULTS, "erasing": 0.7}
    seeds = list(range(100, 110))
    got = batched(images.to(device), names, options, seeds).cpu()
    want = reference(images, names, options, seeds)
    assert got.shape == want.shape == (10, 3, H, W)
    close = (got - want).abs() <= 2e-5
    if "affine" in names:  # nearest sampling: a point on a pixel's edge may round either way (float order)
        assert close.float().mean() > 0.999
    else:
        assert close.all(), (got - want).abs().max()
    assert not torch.equal(got, images.float() / 255)


def test_the_colour_step_in_each_samples_order_matches_torchvision_with_strong_settings(images):
    options = {**ONLINE_DEFAULTS, "brightness": 0.8, "contrast": 0.8, "saturation": 0.9, "hue": 0.5}
    seeds = list(range(10))
    got, want = batched(images, ["colour"], options, seeds), reference(images, ["colour"], options, seeds)
    assert (got - want).abs().max() < 2e-5
    orders = Drawer(["colour"], options, H, W).batch(seeds, seeds).colour_order
    assert len({tuple(o) for o in orders.tolist()}) > 3  # several orders in one batch


def test_the_hue_step_on_a_subset_or_on_all_gives_the_same_images(images):
    draws = Drawer(["colour"], {**ONLINE_DEFAULTS, "hue": 0.4}, H, W).batch(list(range(10)), list(range(10)))
    x = images.float() / 255
    a = batch_augment.colour_jitter(x, draws.colour_order, draws.colour, True, subset=True)
    b = batch_augment.colour_jitter(x, draws.colour_order, draws.colour, True, subset=False)
    assert torch.allclose(a, b, atol=1e-6)


def test_colour_settings_of_zero_leave_those_steps_out(images):
    options = {**ONLINE_DEFAULTS, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0}
    assert torch.equal(batched(images, ["colour"], options, list(range(10))), images.float() / 255)


def test_noise_is_each_samples_own_seeded_draw_clipped(images):
    options = {**ONLINE_DEFAULTS, "noise_sigma": 0.2}
    got = batched(images, ["noise"], options, list(range(10)), noise_seeds=list(range(50, 60)))
    for k, image in enumerate(images):
        noise = torch.randn(3, H, W, generator=torch.Generator().manual_seed(50 + k))
        assert torch.allclose(got[k], (image.float() / 255 + noise * 0.2).clamp(0, 1), atol=1e-6)
    again = batched(images[3:4], ["noise"], options, [3], noise_seeds=[53])
    assert torch.equal(again[0], got[3])  # a sample's noise does not depend on its batch


def test_erasing_sets_each_rectangle_to_zero_and_nothing_else():
    x = torch.rand(2, 3, H, W)
    out = batch_augment.erase(x, torch.tensor([[2, 3, 5, 7], [0, 0, 0, 0]]))
    inside = torch.zeros(H, W, dtype=torch.bool)
    inside[2:7, 3:10] = True
    assert (out[0][:, inside] == 0).all() and torch.equal(out[0][:, ~inside], x[0][:, ~inside])
    assert torch.equal(out[1], x[1])


def test_draws_are_torchvisions_in_order_and_depend_on_the_seed_only():
    drawer = Drawer(ORDER, ONLINE_DEFAULTS, H, W)
    first = drawer.batch([7, 8], [1, 2])
    again = Drawer(list(reversed(ORDER)), ONLINE_DEFAULTS, H, W).batch([8], [2])
    assert torch.equal(first.affine[1], again.affine[0]) and torch.equal(first.colour[1], again.colour[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        flip = bool(torch.rand(1) < 0.5)
        angle = torch.empty(1).uniform_(-15, 15).item()
    assert bool(first.mirror[0]) == flip
    expected = batch_augment.inverse_affine(H, W, **{**drawer.sample(7)["affine"]})
    assert torch.allclose(first.affine[0].flatten(), torch.tensor(expected))
    assert drawer.sample(7)["affine"]["angle"] == angle


def test_shear_and_other_erasing_values_are_refused_not_ignored():
    with pytest.raises(ValueError, match="shear"):
        batch_augment.inverse_affine(H, W, angle=0.0, translate=[0, 0], scale=1.0, shear=[5.0, 0.0])
    with pytest.raises(ValueError, match="erasing with 0"):
        batch_augment._erase_box({"i": 0, "j": 0, "h": 1, "w": 1, "v": torch.ones(1, 1, 1)})
