"""COCO evaluation through pycocotools on hand-made files: what it scores, what it prints, what it refuses."""

import json

import numpy as np
import pytest

from frelon.errors import FrelonError
from frelon.evaluate.detection import STATS, _iou, coco_eval, coco_summary, coco_tables


def write_truth(tmp_path, annotations, categories=(1, 2)):
    truth = {"images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
             "categories": [{"id": c, "name": f"c{c}"} for c in categories],
             "annotations": [{"id": n, "image_id": image, "category_id": category, "bbox": bbox, "iscrowd": 0,
                              "area": bbox[2] * bbox[3], **extra}
                             for n, (image, category, bbox, extra) in enumerate(annotations, 1)]}
    path = tmp_path / "truth.json"
    path.write_text(json.dumps(truth))
    return path


def test_boxes_are_scored_as_boxes_not_as_their_masks(tmp_path):
    """A ground truth whose mask is a small triangle in its box: box evaluation gives a box-equal detection
    AP 1, where mask evaluation (pycocotools' default iouType) would not."""
    triangle = {"segmentation": [[10, 10, 20, 10, 10, 20]]}
    gt = write_truth(tmp_path, [(1, 1, [10, 10, 40, 40], triangle)], categories=(1,))
    scores = coco_eval(gt, [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9}], quiet=True)
    assert scores["AP"] == pytest.approx(1.0)


def test_quiet_prints_nothing_and_otherwise_only_the_twelve_summary_lines(tmp_path, capsys):
    gt = write_truth(tmp_path, [(1, 1, [10, 10, 40, 40], {})], categories=(1,))
    found = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9}]
    capsys.readouterr()
    coco_eval(gt, found, quiet=True)
    assert capsys.readouterr().out == ""
    coco_eval(gt, found)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 12 and all(line.startswith(" Average ") for line in lines)
    assert lines[1].startswith(" Average Precision  (AP) @[ IoU=0.50      |")
    coco_summary(gt, [coco_tables(gt, found)])  # the summary alone says it too, unless told quiet
    assert len(capsys.readouterr().out.splitlines()) == 12


def test_no_detection_at_all_scores_zero_and_says_so(tmp_path, capsys):
    gt = write_truth(tmp_path, [(1, 1, [10, 10, 40, 40], {})], categories=(1,))
    assert coco_tables(gt, []) is None
    capsys.readouterr()
    assert coco_eval(gt, [], quiet=True) == dict.fromkeys(STATS, 0.0)
    assert capsys.readouterr().out == f"{gt}: no detections; every score is 0\n"


def test_a_part_without_categories_has_empty_tables(tmp_path):
    gt = write_truth(tmp_path, [(1, 1, [10, 10, 40, 40], {})])
    found = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9}]
    assert coco_tables(gt, found, part=3, parts=4) == {"categories": [], "precision": None, "recall": None,
                                                        "scores": None}
    assert coco_tables(gt, found, part=1, parts=2)["categories"] == [2]


@pytest.mark.parametrize("results", [
    {"images": [], "annotations": []},                                   # a ground-truth file
    [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}],            # no score
    [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}, [1, 1, [0, 0, 1, 1], 1]],
])
def test_what_is_not_a_results_list_is_refused_with_the_format_expected(tmp_path, results):
    gt = write_truth(tmp_path, [(1, 1, [10, 10, 40, 40], {})])
    (tmp_path / "results.json").write_text(json.dumps(results))
    with pytest.raises(FrelonError, match=r"results.json is not a COCO results file: expected a JSON list of "
                                          r"\{image_id, category_id, bbox: \[x, y, w, h\], score\}"):
        coco_tables(gt, tmp_path / "results.json")


def test_unknown_ids_are_named_five_at_most(tmp_path):
    gt = write_truth(tmp_path, [(1, 1, [10, 10, 40, 40], {})])
    found = [{"image_id": i, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1} for i in range(3, 10)]
    with pytest.raises(FrelonError, match=r"image ids \[3, 4, 5, 6, 7\] or category ids \[\] are not in"):
        coco_tables(gt, found)
    found = [{"image_id": 1, "category_id": c, "bbox": [0, 0, 1, 1], "score": 1} for c in range(3, 10)]
    with pytest.raises(FrelonError, match=r"image ids \[\] or category ids \[3, 4, 5, 6, 7\] are not in"):
        coco_tables(gt, found)


def test_the_devkit_iou_counts_pixels_inclusively_and_no_overlap_is_zero():
    box = np.array([11.0, 21.0, 30.0, 50.0])  # 20 x 30 pixels, x and y apart
    boxes = np.array([
        [11.0, 21.0, 30.0, 50.0],   # itself
        [21.0, 21.0, 40.0, 50.0],   # half of it to the right: 10 x 30 shared of 20 x 30 + 20 x 30
        [31.0, 21.0, 50.0, 50.0],   # beside it, no pixel shared
        [41.0, 21.0, 60.0, 50.0],   # 10 pixels to its right: a negative width is no overlap, not a negative one
        [11.0, 61.0, 30.0, 90.0],   # 10 pixels below it
        [41.0, 61.0, 60.0, 90.0],   # off both ways: negative width and height must not make an overlap
        [11.0, 21.0, 30.0, 35.0],   # its top half: 20 x 15
    ])
    assert _iou(box, boxes).tolist() == pytest.approx([1.0, 300 / 900, 0.0, 0.0, 0.0, 0.0, 0.5])
