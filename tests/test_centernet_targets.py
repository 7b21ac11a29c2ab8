"""CenterNet's targets: the Gaussian radius from its IoU cases, one peak per object, size and offset at its centre."""

import math
import random

import pytest
import torch

from frelon.errors import FrelonError
from frelon.tasks.detection.targets import (build_targets, build_targets_batch, draw_gaussian, gaussian_kernel,
                                           gaussian_radius)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def iou_of_each_case(h: float, w: float, r: float) -> tuple[float, float, float]:
    """IoU with the true box of: the box shifted by r, shrunk by r on every side, grown by r on every side."""
    shifted = (h - r) * (w - r) / (2 * h * w - (h - r) * (w - r))
    shrunk = (h - 2 * r) * (w - 2 * r) / (h * w)
    grown = h * w / ((h + 2 * r) * (w + 2 * r))
    return shifted, shrunk, grown


def official_gaussian_radius(height: float, width: float, min_overlap: float) -> float:
    """CenterNet's src/lib/utils/image.py, verbatim in substance: the reference this project departs from."""
    a1, b1, c1 = 1, height + width, width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2, b2, c2 = 4, 2 * (height + width), (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (height + width), (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def test_the_radius_keeps_every_case_at_min_overlap_and_the_binding_one_exactly():
    rng = random.Random(0)
    for _ in range(2000):
        h, w, t = rng.uniform(1, 500), rng.uniform(1, 500), rng.uniform(0.1, 0.95)
        ious = iou_of_each_case(h, w, gaussian_radius(h, w, t))
        assert min(ious) == pytest.approx(t, abs=1e-6), (h, w, t)
        assert all(iou >= t - 1e-9 for iou in ious), (h, w, t)


def test_the_official_radius_is_over_three_times_larger_and_breaks_the_iou_it_promises():
    h, w, t = 40, 40, 0.7
    ours, official = gaussian_radius(h, w, t), official_gaussian_radius(h, w, t)
    assert official / ours == pytest.approx(3.35, abs=0.01)
    assert min(iou_of_each_case(h, w, official)) < 0.5  # the grown box: 1600 / 61.9² = 0.42


def test_the_kernel_peaks_at_exactly_one_and_falls_to_about_one_percent_at_its_radius():
    kernel = gaussian_kernel(6)
    assert kernel.shape == (13, 13) and kernel.dtype == torch.float32
    assert kernel[6, 6] == 1.0 and kernel.eq(1).sum() == 1
    assert kernel[6, 12] == pytest.approx(math.exp(-36 * 36 / (2 * 13**2)))
    assert torch.equal(gaussian_kernel(0), torch.ones(1, 1))


def test_a_peak_at_the_border_is_clipped_and_overlapping_peaks_keep_the_larger_value():
    heatmap = torch.zeros(5, 5)
    draw_gaussian(heatmap, (0, 0), 2)
    assert torch.equal(heatmap[:3, :3], gaussian_kernel(2)[2:, 2:]) and heatmap[3:].eq(0).all()
    draw_gaussian(heatmap, (1, 0), 2)
    assert heatmap[0, 0] == 1 and heatmap[0, 1] == 1  # each centre stays 1, not a sum


def test_one_box_gives_one_peak_at_its_floored_centre_with_the_fraction_as_offset():
    boxes = torch.tensor([[10.0, 20.0, 50.0, 70.0]])  # on the 4x grid: 2.5, 5, 12.5, 17.5
    targets = build_targets(boxes, torch.tensor([2]), num_classes=3, input_size=(96, 64), max_objects=4)
    assert targets["heatmap"].shape == (3, 24, 16)
    assert targets["heatmap"].eq(1).nonzero().tolist() == [[2, 11, 7]]  # centre (7.5, 11.25)
    assert targets["heatmap"][[0, 1]].eq(0).all()
    assert targets["offset"][0].tolist() == [0.5, 0.25]
    assert targets["size"][0].tolist() == [10.0, 12.5]
    assert targets["index"].tolist() == [11 * 16 + 7, 0, 0, 0]
    assert targets["mask"].tolist() == [1, 0, 0, 0]
    assert targets["skipped"] == 0


def test_two_overlapping_boxes_of_one_class_keep_the_maximum_of_their_peaks():
    boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0], [8.0, 8.0, 72.0, 72.0]])
    targets = build_targets(boxes, torch.tensor([0, 0]), num_classes=1, input_size=(128, 128), min_overlap=0.3)
    alone = [build_targets(box[None], torch.tensor([0]), 1, (128, 128), min_overlap=0.3)["heatmap"] for box in boxes]
    assert torch.equal(targets["heatmap"], torch.maximum(*alone))
    assert targets["heatmap"].eq(1).sum() == 2


def test_more_objects_than_max_objects_is_an_error_that_gives_the_count():
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0]]).repeat(5, 1)
    with pytest.raises(FrelonError, match="5 objects.*max_objects=4"):
        build_targets(boxes, torch.zeros(5, dtype=torch.int64), 1, (32, 32), max_objects=4)


def test_a_box_with_no_area_on_the_grid_is_skipped_and_counted():
    boxes = torch.tensor([[8.0, 8.0, 8.0, 16.0], [40.0, 0.0, 48.0, 8.0], [0.0, 0.0, 16.0, 16.0]])  # 2nd: off the grid
    targets = build_targets(boxes, torch.tensor([0, 0, 0]), 1, (32, 32), max_objects=3)
    assert targets["skipped"] == 2 and targets["skipped"].dtype == torch.int64
    assert targets["mask"].tolist() == [0, 0, 1]
    assert targets["heatmap"].eq(1).sum() == 1


def test_the_radius_of_many_boxes_at_once_is_each_ones():
    rng = random.Random(1)
    sizes = [(rng.uniform(0.5, 300), rng.uniform(0.5, 300)) for _ in range(500)] + [(1, 1), (1, 128), (128, 128)]
    for t in (0.3, 0.7):
        many = gaussian_radius(*torch.tensor(sizes, dtype=torch.float64).T, t)
        assert many.dtype == torch.float64
        assert many.tolist() == [gaussian_radius(h, w, t) for h, w in sizes]


def random_boxes(generator: torch.Generator, batch: int, slots: int, size: int) -> torch.Tensor:
    """XYXY boxes of every kind: inside, cut by the border, off the input, tiny, as large as the input."""
    xy = torch.rand(batch, slots, 2, generator=generator) * (size + 40) - 20
    wh = torch.rand(batch, slots, 2, generator=generator) ** 3 * size * 1.2
    boxes = torch.cat([xy, xy + wh], -1)
    boxes[0, 0] = torch.tensor([0.0, 0.0, size, size])  # the largest radius
    boxes[0, 1] = torch.tensor([5.0, 6.0, 6.5, 7.0])  # radius 0
    boxes[0, 2] = torch.tensor([9.0, 3.0, 9.0, 30.0])  # no width: skipped
    boxes[1, :2] = torch.tensor([[8.0, 8.0, 60.0, 56.0], [14.0, 10.0, 66.0, 62.0]])  # overlapping, one class below
    return boxes


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size, num_classes, min_overlap", [(128, 3, 0.7), (96, 1, 0.3), (64, 5, 0.95)])
def test_a_batchs_targets_are_each_images_build_targets(device, size, num_classes, min_overlap):
    generator = torch.Generator().manual_seed(size)
    batch, slots, max_objects = 6, 9, 12
    boxes = random_boxes(generator, batch, slots, size)
    labels = torch.randint(0, num_classes, (batch, slots), generator=generator)
    labels[1, :2] = 0
    counts = torch.tensor([slots, 2, 0, 5, 9, 1])
    valid = torch.arange(slots) < counts[:, None]
    got = build_targets_batch(boxes.to(device), labels.to(device), valid.to(device), num_classes, (size, size),
                              max_objects=max_objects, min_overlap=min_overlap)
    assert all(v.device.type == device for v in got.values())
    for b in range(batch):
        n = int(counts[b])
        expected = build_targets(boxes[b, :n], labels[b, :n], num_classes, (size, size), max_objects=max_objects,
                                 min_overlap=min_overlap)
        assert set(got) == set(expected)
        for key, value in expected.items():
            assert got[key][b].dtype == value.dtype and got[key][b].shape == value.shape, key
            assert torch.allclose(got[key][b].cpu().double(), value.double(), atol=1e-6, rtol=0), (key, b)
    assert got["skipped"][0] >= 1 and got["heatmap"][1].eq(1).sum() == 2


def test_a_batch_without_objects_and_its_errors():
    empty = build_targets_batch(torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.int64),
                                torch.zeros(2, 0, dtype=torch.bool), 2, (32, 32), max_objects=4)
    assert empty["heatmap"].shape == (2, 2, 8, 8) and empty["heatmap"].eq(0).all() and empty["mask"].eq(0).all()
    assert empty["index"].shape == (2, 4) and empty["skipped"].tolist() == [0, 0]
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0]]).repeat(1, 5, 1)
    with pytest.raises(FrelonError, match="5 objects.*max_objects=4"):
        build_targets_batch(boxes, torch.zeros(1, 5, dtype=torch.int64), torch.ones(1, 5, dtype=torch.bool), 1,
                            (32, 32), max_objects=4)
    with pytest.raises(FrelonError, match="not divisible by the output stride 4"):
        build_targets_batch(boxes[:, :1], torch.zeros(1, 1, dtype=torch.int64), torch.ones(1, 1, dtype=torch.bool),
                            1, (30, 32))


def peak_from_its_definition(height: int, width: int, x: int, y: int, radius: int) -> torch.Tensor:
    """exp(-(dx² + dy²) / (2 sigma²)) with sigma = (2 radius + 1) / 6, within `radius` of (x, y) on each axis."""
    sigma = (2 * radius + 1) / 6
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    value = torch.exp(-((xs - x) ** 2 + (ys - y) ** 2).float() / (2 * sigma**2))
    return value.where(((xs - x).abs() <= radius) & ((ys - y).abs() <= radius), torch.tensor(0.0))


@pytest.mark.parametrize("min_overlap", [0.3, 0.7])
@pytest.mark.parametrize("batched", [False, True])
def test_a_peak_spreads_exactly_its_radius_at_the_min_overlap_asked_for(min_overlap, batched):
    """The radius comes from gaussian_radius(ceil(h), ceil(w), min_overlap) of the box on the grid, and the peak
    is the Gaussian of that radius: 0.3 and 0.7 give different widths, and neither is the official 3x one."""
    box = torch.tensor([[38.0, 30.0, 102.0, 78.0]])  # 16 x 12 cells at stride 4, centre (17.5, 13.5)
    radius = int(gaussian_radius(12, 16, min_overlap))
    # by hand, case 2 binds: 4r² - 56r + (1 - t) 192 = 0, r = (56 - sqrt(56² - 16 (1 - t) 192)) / 8:
    # 3.08 at t = 0.3, 1.12 at t = 0.7 (the official code's 3.3-3.8x would draw 10 and 4)
    assert radius == {0.3: 3, 0.7: 1}[min_overlap]
    if batched:
        heatmap = build_targets_batch(box[None], torch.tensor([[0]]), torch.tensor([[True]]), 1, (128, 160),
                                      max_objects=2, min_overlap=min_overlap)["heatmap"][0, 0]
    else:
        heatmap = build_targets(box, torch.tensor([0]), 1, (128, 160), max_objects=2,
                                min_overlap=min_overlap)["heatmap"][0]
    expected = peak_from_its_definition(32, 40, 17, 13, radius)
    torch.testing.assert_close(heatmap, expected, atol=1e-6, rtol=0)
    row = heatmap[13]
    assert row[17 + radius] > 0 and row[17 + radius + 1] == 0 and row[17 - radius] > 0 and row[17 - radius - 1] == 0


def test_one_boxs_radius_is_a_float_and_the_defaults_are_the_papers():
    assert isinstance(gaussian_radius(12.0, 16.0), float)
    assert gaussian_radius(12.0, 16.0) == gaussian_radius(12.0, 16.0, 0.7)
    boxes, labels = torch.tensor([[0.0, 0.0, 60.0, 44.0]]), torch.tensor([0])
    single = build_targets(boxes, labels, 1, (64, 64))
    assert single["size"].shape == (128, 2) and torch.equal(
        single["heatmap"], build_targets(boxes, labels, 1, (64, 64), 4, 128, 0.7)["heatmap"])
    batch = build_targets_batch(boxes[None], labels[None], torch.tensor([[True]]), 1, (64, 64))
    assert batch["size"].shape == (1, 128, 2) and torch.allclose(batch["heatmap"][0], single["heatmap"], atol=1e-6)


@pytest.mark.parametrize("corner", ["top-left", "bottom-right"])
def test_a_peak_that_reaches_the_first_or_last_cell_is_its_definition_batched_or_not(corner):
    """3 x 3-cell boxes in the corners, radius 1: the peak touches row and column 0 (or 15) and stays whole."""
    box = torch.tensor([[0.0, 0.0, 12.0, 12.0]]) if corner == "top-left" else torch.tensor([[52.0, 52.0, 64.0, 64.0]])
    radius = int(gaussian_radius(3, 3, 0.05))
    assert radius == 1
    single = build_targets(box, torch.tensor([0]), 1, (64, 64), max_objects=2, min_overlap=0.05)["heatmap"][0]
    batch = build_targets_batch(box[None], torch.tensor([[0]]), torch.tensor([[True]]), 1, (64, 64), max_objects=2,
                                min_overlap=0.05)["heatmap"][0, 0]
    at = 1 if corner == "top-left" else 14  # the centre cell: int(1.5), int(14.5)
    expected = peak_from_its_definition(16, 16, at, at, radius)
    assert expected[at - 1, at - 1] > 0 and (at - 1 == 0 or at + 1 == 15)
    torch.testing.assert_close(single, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(batch, expected, atol=1e-6, rtol=0)


def test_a_peak_drawn_at_the_last_cell_is_clipped_and_a_centre_off_the_grid_is_refused():
    heatmap = torch.zeros(4, 6)
    draw_gaussian(heatmap, (5, 3), 2)
    assert torch.equal(heatmap[1:, 3:], gaussian_kernel(2)[:3, :3]) and heatmap[0].eq(0).all()
    for centre in ((6, 0), (0, 4), (-1, 0), (0, -1)):
        with pytest.raises(ValueError, match=rf"centre \(x={centre[0]}, y={centre[1]}\) is outside the 4x6 heatmap: "
                                             "clamp it into the grid"):
            draw_gaussian(torch.zeros(4, 6), centre, 1)
