"""CenterNet's targets: the Gaussian radius from its IoU cases, one peak per object, size and offset at its centre."""

import math
import random

import pytest
import torch

from frelon.errors import FrelonError
from frelon.tasks.detection.targets import build_targets, draw_gaussian, gaussian_kernel, gaussian_radius


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
