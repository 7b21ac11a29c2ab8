"""CenterNet's decoding: heads that match the ground truth give back its boxes (COCO AP 1), mirrors give mirrors."""

import json

import pytest
import torch

from frelon.evaluate.detection import coco_eval
from frelon.tasks.detection.decode import decode, heatmap_probabilities, merge_flip
from frelon.tasks.detection.targets import build_targets

STRIDE = 4


def perfect_heads(boxes: list[list[float]], labels: list[int], num_classes: int, input_size: tuple[int, int]) -> dict:
    """The maps a perfect model would output for one image: the target heatmap, size and offset at each centre."""
    targets = build_targets(torch.tensor(boxes), torch.tensor(labels), num_classes, input_size, STRIDE, max_objects=8)
    height, width = targets["heatmap"].shape[1:]
    size, offset = torch.zeros(2, height * width), torch.zeros(2, height * width)
    real = targets["mask"].bool()
    size[:, targets["index"][real]] = targets["size"][real].T
    offset[:, targets["index"][real]] = targets["offset"][real].T
    return {"heatmap": targets["heatmap"][None], "size": size.reshape(1, 2, height, width),
            "offset": offset.reshape(1, 2, height, width)}


def batched(heads: list[dict]) -> dict:
    """Images' heads stacked as one batch, as the model outputs them."""
    return {name: torch.cat([h[name] for h in heads]) for name in heads[0]}


def test_decoding_perfect_heads_scores_coco_ap_one(tmp_path):
    images = {1: ([[8.0, 12.0, 40.0, 60.0], [64.0, 64.0, 120.0, 96.0]], [0, 1]),  # centres and sizes on the grid
              2: ([[0.0, 0.0, 32.0, 32.0], [72.0, 8.0, 104.0, 120.0]], [1, 0])}
    truth = {"images": [{"id": i, "width": 128, "height": 128} for i in images],
             "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
             "annotations": [{"id": 10 * i + n, "image_id": i, "category_id": label + 1, "iscrowd": 0,
                              "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)}
                             for i, (boxes, labels) in images.items()
                             for n, ((x1, y1, x2, y2), label) in enumerate(zip(boxes, labels))]}
    (tmp_path / "truth.json").write_text(json.dumps(truth))
    heads = batched([perfect_heads(boxes, labels, 2, (128, 128)) for boxes, labels in images.values()])
    boxes, scores, labels = decode(heads["heatmap"], heads["size"], heads["offset"])
    assert boxes.shape == (2, 100, 4) and boxes.dtype == torch.float32 and labels.dtype == torch.int64
    detections = [{"image_id": image_id, "category_id": int(label) + 1, "score": float(score),
                   "bbox": [x1 * STRIDE, y1 * STRIDE, (x2 - x1) * STRIDE, (y2 - y1) * STRIDE]}
                  for image_id, image_boxes, image_scores, image_labels in zip(images, boxes, scores, labels)
                  for (x1, y1, x2, y2), score, label in zip(image_boxes.tolist(), image_scores, image_labels)]
    assert sorted(d["bbox"] for d in detections if d["score"] == 1) == sorted(a["bbox"] for a in truth["annotations"])
    ap = coco_eval(tmp_path / "truth.json", detections, quiet=True)
    assert ap["AP"] == 1.0 and ap["AP50"] == 1.0


def test_merging_an_exact_mirror_gives_back_the_plain_probabilities_and_size():
    torch.manual_seed(0)
    plain = {"heatmap": torch.randn(1, 3, 8, 6), "size": torch.rand(1, 2, 8, 6), "offset": torch.rand(1, 2, 8, 6)}
    mirrored = {name: value.flip(3) for name, value in plain.items()}
    merged = merge_flip(plain, mirrored)
    assert merged.keys() == plain.keys()
    for name, value in heatmap_probabilities(plain).items():
        assert torch.equal(merged[name], value), name


def test_decoding_mirrored_heads_gives_mirrored_boxes():
    boxes = [[8.0, 8.0, 36.0, 40.0], [60.0, 20.0, 104.0, 44.0]]  # centres mid-cell in x: the offset is its own mirror
    heads = {name: value.flip(3) for name, value in perfect_heads(boxes, [0, 1], 2, (64, 128)).items()}
    found, scores, labels = decode(heads["heatmap"], heads["size"], heads["offset"], k=2)
    width = 128 / STRIDE
    mirrored = [[width - x2 / STRIDE, y1 / STRIDE, width - x1 / STRIDE, y2 / STRIDE] for x1, y1, x2, y2 in boxes]
    assert sorted(zip(labels[0].tolist(), found[0].tolist())) == [(0, mirrored[0]), (1, mirrored[1])]
    assert scores.eq(1).all()


def test_a_peak_decodes_to_its_cell_plus_both_offsets_and_its_size_around_that_centre():
    heatmap, size, offset = torch.zeros(1, 2, 8, 10), torch.zeros(1, 2, 8, 10), torch.zeros(1, 2, 8, 10)
    heatmap[0, 1, 3, 6] = 0.9  # class 1 at x = 6, y = 3
    offset[0, :, 3, 6] = torch.tensor([0.25, 0.75])  # x, then y
    size[0, :, 3, 6] = torch.tensor([4.0, 2.0])  # width, then height
    boxes, scores, labels = decode(heatmap, size, offset, k=1)
    assert boxes[0, 0].tolist() == [6.25 - 2, 3.75 - 1, 6.25 + 2, 3.75 + 1]
    assert scores.tolist() == [[pytest.approx(0.9)]] and labels.tolist() == [[1]]


def test_a_cell_next_to_a_higher_one_of_its_class_is_no_peak_but_one_of_another_class_is():
    heatmap = torch.zeros(1, 2, 6, 6)
    heatmap[0, 0, 2, 2], heatmap[0, 0, 2, 3], heatmap[0, 0, 3, 3] = 0.9, 0.8, 0.7  # one object's cells
    heatmap[0, 0, 2, 5] = 0.6  # two cells away: a peak of its own
    heatmap[0, 1, 2, 3] = 0.5  # another class on the same cell: not suppressed by class 0
    _, scores, labels = decode(heatmap, torch.ones(1, 2, 6, 6), torch.zeros(1, 2, 6, 6), k=5)
    assert scores[0].tolist() == pytest.approx([0.9, 0.6, 0.5, 0.0, 0.0])
    assert labels[0, :3].tolist() == [0, 0, 1]


def test_k_larger_than_the_cells_returns_every_cell_and_ties_keep_both():
    heatmap = torch.zeros(1, 1, 3, 3)
    heatmap[0, 0, 0, 0] = heatmap[0, 0, 2, 2] = 0.5
    boxes, scores, _ = decode(heatmap, torch.ones(1, 2, 3, 3), torch.zeros(1, 2, 3, 3), k=100)
    assert boxes.shape == (1, 9, 4) and scores[0, :2].tolist() == [0.5, 0.5] and scores[0, 2:].eq(0).all()
