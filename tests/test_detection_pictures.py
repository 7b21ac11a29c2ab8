"""Pictures of a run: predicted boxes in red over true boxes in green, tiled into one PNG."""

import torch
from PIL import Image

from frelon.report.detections import GREEN, PICTURE_SIDE, RED, draw, place_labels, save_grid


def blank(height: int = 60, width: int = 80) -> torch.Tensor:
    return torch.zeros(3, height, width, dtype=torch.uint8)


def pixel(image: torch.Tensor, x: int, y: int) -> tuple[int, ...]:
    return tuple(image[:, y, x].tolist())


def test_predictions_are_red_and_truths_green_on_their_edges():
    drawn = draw(blank(), [{"bbox": [40, 30, 30, 20], "score": 0.87, "name": "dog"}],
                 truths=[{"bbox": [5, 5, 20, 20], "name": "cat"}], min_side=0)
    assert drawn.shape == (3, 60, 80) and drawn.dtype == torch.uint8
    assert pixel(drawn, 55, 30) == RED  # top edge of the prediction
    assert pixel(drawn, 5, 15) == GREEN  # left edge of the truth
    assert pixel(drawn, 2, 2) == (0, 0, 0)


def test_a_runs_picture_is_enlarged_to_a_legible_size_and_an_annotated_frame_keeps_its_size():
    prediction = [{"bbox": [40, 20, 20, 20], "score": 0.87, "name": "dog"}]
    drawn = draw(blank(48, 64), prediction, truths=[{"bbox": [5, 5, 20, 20], "name": "cat"}])
    scale = -(-PICTURE_SIDE // 48)  # a whole factor: the boxes stay on the image's pixels
    assert drawn.shape == (3, 48 * scale, 64 * scale)
    assert pixel(drawn, 50 * scale, 40 * scale - 1) == RED  # bottom edge of the prediction
    assert draw(blank(48, 64), prediction).shape == (3, 48, 64)


def test_labels_of_boxes_in_the_same_place_do_not_overlap():
    boxes = [(10, 20, 60, 50)] * 4 + [(12, 22, 58, 48)]
    spots = place_labels(boxes, [(40, 12)] * 5, 100, 80)
    for i, a in enumerate(spots):
        assert 0 <= a[0] and 0 <= a[1] and a[2] <= 100 and a[3] <= 80  # inside the image
        for b in spots[i + 1:]:
            assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1]), (a, b)
    assert spots[0] == (10, 8, 50, 20)  # the first label: just above its box


def test_predictions_under_min_score_are_not_drawn():
    drawn = draw(blank(), [{"bbox": [40, 30, 30, 20], "score": 0.29, "name": "dog"}], min_score=0.3)
    assert torch.equal(drawn, blank())


def test_grid_of_different_sizes_is_a_png_of_the_expected_size(tmp_path):
    images = [blank(60, 80), blank(40, 100), blank(50, 50)]
    out = tmp_path / "pictures" / "val.png"
    save_grid(images, out, columns=2)
    padding = 2  # make_grid's default, around and between tiles
    with Image.open(out) as png:
        assert png.format == "PNG"
        assert png.size == (2 * (100 + padding) + padding, 2 * (60 + padding) + padding)
    assert [p.name for p in out.parent.iterdir()] == ["val.png"]
