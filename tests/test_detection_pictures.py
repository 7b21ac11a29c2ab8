"""Pictures of a run: predicted boxes in red over true boxes in green, tiled into one PNG."""

import torch
from PIL import Image

from frelon.report.detections import GREEN, RED, draw, save_grid


def blank(height: int = 60, width: int = 80) -> torch.Tensor:
    return torch.zeros(3, height, width, dtype=torch.uint8)


def pixel(image: torch.Tensor, x: int, y: int) -> tuple[int, ...]:
    return tuple(image[:, y, x].tolist())


def test_predictions_are_red_and_truths_green_on_their_edges():
    drawn = draw(blank(), [{"bbox": [40, 30, 30, 20], "score": 0.87, "name": "dog"}],
                 truths=[{"bbox": [5, 5, 20, 20], "name": "cat"}])
    assert drawn.shape == (3, 60, 80) and drawn.dtype == torch.uint8
    assert pixel(drawn, 55, 30) == RED  # top edge of the prediction
    assert pixel(drawn, 5, 15) == GREEN  # left edge of the truth
    assert pixel(drawn, 2, 2) == (0, 0, 0)


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
