"""VOC07 11-point AP50 on hand-made boxes: the devkit's rules, one per test."""

import json

import pytest

from frelon.evaluate.detection import voc07_ap50

NAMES = ("cat", "dog")


def truth(*objects: tuple) -> dict:
    """COCO ground truth as frelon.data.voc writes it, from (image_id, category_id, bbox, difficult)."""
    images = sorted({image for image, *_ in objects})
    return {"images": [{"id": i, "width": 500, "height": 500} for i in images],
            "categories": [{"id": i + 1, "name": name} for i, name in enumerate(NAMES)],
            "annotations": [{"id": n, "image_id": image, "category_id": category, "bbox": bbox,
                             "iscrowd": int(difficult)}
                            for n, (image, category, bbox, difficult) in enumerate(objects, 1)]}


def det(image: int, category: int, bbox: list, score: float) -> dict:
    return {"image_id": image, "category_id": category, "bbox": bbox, "score": score}


A, B = [10, 10, 50, 40], [200, 100, 80, 120]
GT = truth((1, 1, A, False), (2, 1, B, False))


def test_perfect_detections_score_one(tmp_path):
    gt = truth((1, 1, A, False), (1, 2, B, False), (2, 1, B, False))
    path = tmp_path / "val.json"
    path.write_text(json.dumps(gt))
    found = [det(1, 1, A, 0.9), det(1, 2, B, 0.8), det(2, 1, B, 0.7)]
    assert voc07_ap50(path, found) == {"AP50_voc07": 1.0, "per_class": {"cat": 1.0, "dog": 1.0}}


def test_a_detection_on_a_difficult_box_is_ignored():
    gt = truth((1, 1, A, False), (1, 1, B, True))
    plain = voc07_ap50(gt, [det(1, 1, A, 0.5)])
    with_difficult = voc07_ap50(gt, [det(1, 1, B, 0.9), det(1, 1, A, 0.5)])  # as a FP first, AP would be 0.5
    assert plain["AP50_voc07"] == with_difficult["AP50_voc07"] == 1.0


def test_a_second_detection_of_a_matched_box_is_a_false_positive():
    # TP, duplicate, TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    found = [det(1, 1, A, 0.9), det(1, 1, A, 0.8), det(2, 1, B, 0.7)]
    assert voc07_ap50(GT, found)["AP50_voc07"] == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)


def test_eleven_point_ap_by_hand():
    found = [det(1, 1, A, 0.9), det(2, 1, [400, 400, 30, 30], 0.8), det(2, 1, B, 0.7)]  # TP, FP, TP
    true_positives, detections_so_far = [1, 1, 2], [1, 2, 3]
    precision = [tp / n for tp, n in zip(true_positives, detections_so_far)]  # 1, 0.5, 0.667
    recall = [tp / 2 for tp in true_positives]  # 0.5, 0.5, 1
    expected = sum(max((p for p, r in zip(precision, recall) if r >= t / 10), default=0) for t in range(11)) / 11
    assert expected == pytest.approx(28 / 33)
    assert voc07_ap50(GT, found)["per_class"]["cat"] == pytest.approx(expected)


def test_iou_of_half_is_a_miss_and_just_above_a_hit_as_in_the_devkit():
    gt = truth((1, 1, [0, 0, 100, 100], False))
    assert voc07_ap50(gt, [det(1, 1, [0, 0, 49.9, 100], 0.9)])["AP50_voc07"] == 0.0  # IoU 0.499
    assert voc07_ap50(gt, [det(1, 1, [0, 0, 50, 100], 0.9)])["AP50_voc07"] == 0.0  # IoU 0.5: not > 0.5
    assert voc07_ap50(gt, [det(1, 1, [0, 0, 50.1, 100], 0.9)])["AP50_voc07"] == 1.0  # IoU 0.501


def test_a_class_with_only_difficult_objects_is_left_out_of_the_mean():
    gt = truth((1, 1, A, False), (1, 2, B, True))
    result = voc07_ap50(gt, [det(1, 1, A, 0.9), det(1, 2, [0, 0, 5, 5], 0.8)])
    assert result == {"AP50_voc07": 1.0, "per_class": {"cat": 1.0}}


def test_detections_with_ids_the_ground_truth_lacks_are_refused():
    with pytest.raises(Exception, match="category ids \\[0\\]"):
        voc07_ap50(GT, [det(1, 0, A, 0.9)])
