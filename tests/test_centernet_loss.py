"""CenterNet's loss: the penalty-reduced focal loss per object, L1 at object centres only, the weighted sum."""

import math

import pytest
import torch

from frelon.tasks.detection.loss import centernet_loss, focal_loss, l1_at_centres
from frelon.tasks.detection.targets import build_targets


def sigmoid(x: float) -> float:
    """The expected values are computed by hand, apart from torch."""
    return 1 / (1 + math.exp(-x))


def test_the_focal_loss_of_one_centre_and_one_near_miss_matches_the_formula():
    logits, target = torch.tensor([[[[0.0, 2.0]]]]), torch.tensor([[[[1.0, 0.5]]]])
    p_centre, p_near = sigmoid(0.0), sigmoid(2.0)
    positive = -((1 - p_centre) ** 2) * math.log(p_centre)
    negative = -((1 - 0.5) ** 4) * p_near**2 * math.log(1 - p_near)
    assert focal_loss(logits, target).item() == pytest.approx(positive + negative, rel=1e-6)


def test_the_focal_loss_is_divided_by_the_number_of_objects():
    logits, target = torch.tensor([[[[0.0, 2.0]]]]), torch.tensor([[[[1.0, 0.5]]]])
    twice = focal_loss(logits.repeat(1, 1, 1, 2), target.repeat(1, 1, 1, 2))
    assert twice.item() == pytest.approx(focal_loss(logits, target).item(), rel=1e-6)


def test_without_objects_the_focal_loss_is_the_plain_negative_sum():
    logits, target = torch.tensor([[[[-1.0, 3.0]]]]), torch.zeros(1, 1, 1, 2)
    expected = -sum(sigmoid(x) ** 2 * math.log(1 - sigmoid(x)) for x in (-1.0, 3.0))
    assert focal_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_predictions_are_clamped_so_a_confident_miss_costs_a_finite_loss():
    loss = focal_loss(torch.tensor([[[[-100.0]]]]), torch.ones(1, 1, 1, 1))
    assert loss.item() == pytest.approx(-((1 - 1e-4) ** 2) * math.log(1e-4), rel=1e-4)


def test_l1_counts_only_the_masked_centres_per_coordinate():
    pred = torch.arange(8.0).reshape(1, 2, 2, 2)  # cell 3 holds (3, 7), cell 0 holds (0, 4)
    index, mask = torch.tensor([[3, 0]]), torch.tensor([[1.0, 0.0]])
    target = torch.tensor([[[1.0, 1.0], [100.0, 100.0]]])
    assert l1_at_centres(pred, index, mask, target).item() == pytest.approx((2 + 6) / (2 + 1e-4))


def test_the_total_weighs_size_by_a_tenth_and_is_float32_for_bf16_outputs():
    torch.manual_seed(0)
    boxes = torch.tensor([[4.0, 4.0, 28.0, 20.0]])
    one = build_targets(boxes, torch.tensor([1]), num_classes=2, input_size=(32, 32), max_objects=2)
    targets = {name: torch.stack([one[name], one[name]]) for name in one}
    outputs = {"heatmap": torch.randn(2, 2, 8, 8), "size": torch.randn(2, 2, 8, 8), "offset": torch.randn(2, 2, 8, 8)}
    half = {name: value.to(torch.bfloat16).requires_grad_() for name, value in outputs.items()}
    total, terms = centernet_loss(half, targets)
    assert total.dtype == torch.float32 and total.requires_grad
    assert not any(term.requires_grad for term in terms.values())
    assert total.item() == pytest.approx(
        (terms["heatmap_loss"] + 0.1 * terms["size_loss"] + terms["offset_loss"]).item(), rel=1e-6)
    assert terms["heatmap_loss"].item() == pytest.approx(
        focal_loss(half["heatmap"].float(), targets["heatmap"]).item(), rel=1e-6)


def focal_terms_by_hand(logits: list[float], targets: list[float]) -> float:
    """Each cell's term of the paper's focal loss (alpha 2, beta 4), summed: positives at target 1."""
    total = 0.0
    for x, t in zip(logits, targets):
        p = min(max(sigmoid(x), 1e-4), 1 - 1e-4)
        total += (1 - p) ** 2 * math.log(p) if t == 1 else (1 - t) ** 4 * p**2 * math.log(1 - p)
    return -total


def test_the_focal_loss_of_a_batch_is_its_sum_over_every_image_divided_by_all_its_objects():
    """Not the mean of per-image losses: the official code normalises once over the batch. The two images
    differ (1 object and 3), so the two ways give different numbers."""
    first = ([0.5, -1.0, 2.0, 0.0], [1.0, 0.2, 0.0, 0.7])
    second = ([1.5, 0.3, -0.5, 3.0], [1.0, 1.0, 0.4, 1.0])
    logits = torch.tensor([first[0], second[0]]).reshape(2, 1, 2, 2)
    target = torch.tensor([first[1], second[1]]).reshape(2, 1, 2, 2)
    batch = (focal_terms_by_hand(*first) + focal_terms_by_hand(*second)) / 4
    per_image = (focal_terms_by_hand(*first) / 1 + focal_terms_by_hand(*second) / 3) / 2
    assert abs(batch - per_image) > 0.1
    assert focal_loss(logits, target).item() == pytest.approx(batch, rel=1e-6)


def test_the_focal_loss_takes_alpha_and_beta():
    logits, target = torch.tensor([[[[0.5, 1.0]]]]), torch.tensor([[[[1.0, 0.5]]]])
    p, q = sigmoid(0.5), sigmoid(1.0)
    expected = -((1 - p) ** 3 * math.log(p) + (1 - 0.5) ** 2 * q**3 * math.log(1 - q))
    assert focal_loss(logits, target, alpha=3.0, beta=2.0).item() == pytest.approx(expected, rel=1e-6)


def test_a_confident_hit_is_clamped_too_and_costs_its_clamped_negatives():
    loss = focal_loss(torch.tensor([[[[100.0, 100.0]]]]), torch.tensor([[[[1.0, 0.0]]]]))
    assert loss.item() == pytest.approx(-(1e-4**2 * math.log(1 - 1e-4) + (1 - 1e-4) ** 2 * math.log(1e-4)), rel=1e-4)


def test_l1_averages_over_every_image_of_the_batch_and_both_coordinates():
    pred = torch.zeros(2, 2, 2, 2)
    pred[0, :, 0, 1] = torch.tensor([1.0, 2.0])  # image 0, cell 1
    pred[1, :, 1, 1] = torch.tensor([5.0, 7.0])  # image 1, cell 3
    index, mask = torch.tensor([[1, 0], [3, 2]]), torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    target = torch.tensor([[[0.0, 0.0], [9.0, 9.0]], [[4.0, 4.0], [1.0, -1.0]]])
    # |1-0| + |2-0| + |5-4| + |7-4| + |0-1| + |0+1| over 6 coordinates
    expected = (1 + 2 + 1 + 3 + 1 + 1) / (6 + 1e-4)
    assert l1_at_centres(pred, index, mask, target).item() == pytest.approx(expected, rel=1e-6)


def test_the_total_takes_its_weights():
    torch.manual_seed(1)
    one = build_targets(torch.tensor([[4.0, 4.0, 28.0, 20.0]]), torch.tensor([0]), 1, (32, 32), max_objects=2)
    targets = {name: value[None] for name, value in one.items()}
    outputs = {"heatmap": torch.randn(1, 1, 8, 8), "size": torch.randn(1, 2, 8, 8), "offset": torch.randn(1, 2, 8, 8)}
    total, terms = centernet_loss(outputs, targets, size_weight=0.5, offset_weight=2.0)
    assert total.item() == pytest.approx(
        (terms["heatmap_loss"] + 0.5 * terms["size_loss"] + 2.0 * terms["offset_loss"]).item(), rel=1e-6)
    assert terms["heatmap_loss"].item() == pytest.approx(focal_loss(outputs["heatmap"], targets["heatmap"]).item())
    assert terms["size_loss"].item() == pytest.approx(
        l1_at_centres(outputs["size"], targets["index"], targets["mask"], targets["size"]).item())
    assert terms["offset_loss"].item() == pytest.approx(
        l1_at_centres(outputs["offset"], targets["index"], targets["mask"], targets["offset"]).item())
