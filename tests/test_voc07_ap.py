"""VOC07 11-point AP50 on hand-made boxes: the devkit's rules, one per test."""

import json

import pytest

from frelon.errors import FrelonError
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
    with pytest.raises(FrelonError, match="category ids \\[0\\]"):
        voc07_ap50(GT, [det(1, 0, A, 0.9)])


def test_a_detection_on_an_image_without_an_object_of_its_class_is_a_false_positive():
    gt = truth((1, 1, A, False), (2, 2, B, False))  # image 2 has a dog and no cat
    # a cat on image 2 first (FP), then the cat of image 1 (TP): precision 1/2 at recall 1, at every threshold
    result = voc07_ap50(gt, [det(2, 1, B, 0.9), det(1, 1, A, 0.8), det(2, 2, B, 0.7)])
    assert result["per_class"] == {"cat": pytest.approx(0.5), "dog": 1.0}


def test_a_detection_takes_the_box_it_overlaps_most_and_overlap_is_counted_in_pixels_inclusive():
    # two cats side by side; the detection overlaps the second more: it matches it, and the first is still free
    gt = truth((1, 1, [0, 0, 40, 40], False), (1, 1, [30, 0, 40, 40], False))
    found = [det(1, 1, [28, 0, 40, 40], 0.9), det(1, 1, [0, 0, 40, 40], 0.8)]
    assert voc07_ap50(gt, found)["AP50_voc07"] == 1.0
    # a side is max - min + 1 pixels: 1-pixel boxes 1 pixel apart do not overlap, the same pixel does (IoU 1)
    one = truth((1, 1, [10, 10, 1, 1], False))
    assert voc07_ap50(one, [det(1, 1, [10, 10, 1, 1], 0.9)])["AP50_voc07"] == 1.0
    assert voc07_ap50(one, [det(1, 1, [11, 10, 1, 1], 0.9)])["AP50_voc07"] == 0.0


def test_recall_reaching_a_tenth_exactly_counts_at_that_tenth():
    # 10 cats, 3 found first then misses: recall 0.3 exactly must count at t = 0.3 (4 of 11 thresholds at 1)
    gt = truth(*[(i, 1, A, False) for i in range(1, 11)])
    found = [det(i, 1, A, 1 - i / 100) for i in range(1, 4)]
    assert voc07_ap50(gt, found)["AP50_voc07"] == pytest.approx(4 / 11)


def test_coco_boxes_become_one_based_inclusive_voc_boxes_with_x_and_y_each_their_own():
    # x 20..59 and y 5..24 in COCO pixels; a detection one pixel lower overlaps 19 of 20 rows: IoU 19/21 > 0.5
    gt = truth((1, 1, [20, 5, 40, 20], False))
    assert voc07_ap50(gt, [det(1, 1, [20, 6, 40, 20], 0.9)])["AP50_voc07"] == 1.0
    # shifted 14 pixels right: 26 of 40 columns shared, IoU 26/54 < 0.5; 13 pixels: 27/53 > 0.5
    assert voc07_ap50(gt, [det(1, 1, [34, 5, 40, 20], 0.9)])["AP50_voc07"] == 0.0
    assert voc07_ap50(gt, [det(1, 1, [33, 5, 40, 20], 0.9)])["AP50_voc07"] == 1.0
    # 7 rows down: 13 of 20 shared, IoU 13/27 < 0.5 (with 22-row boxes it would be 15/29); 6 rows: 14/26 > 0.5
    assert voc07_ap50(gt, [det(1, 1, [20, 12, 40, 20], 0.9)])["AP50_voc07"] == 0.0
    assert voc07_ap50(gt, [det(1, 1, [20, 11, 40, 20], 0.9)])["AP50_voc07"] == 1.0


def test_an_object_without_a_difficult_flag_counts():
    gt = truth((1, 1, A, False), (2, 1, B, False))
    for annotation in gt["annotations"]:
        del annotation["iscrowd"]
    assert voc07_ap50(gt, [det(1, 1, A, 0.9)])["AP50_voc07"] == pytest.approx(6 / 11)  # recall 1/2


def test_a_recall_of_nineteen_in_twenty_stops_short_of_the_last_tenth():
    gt = truth(*[(i, 1, A, False) for i in range(1, 21)])
    found = [det(i, 1, A, 1 - i / 100) for i in range(1, 20)]
    assert voc07_ap50(gt, found)["AP50_voc07"] == pytest.approx(10 / 11)


def test_a_ground_truth_of_difficult_objects_only_and_unknown_ids_are_named():
    with pytest.raises(FrelonError, match=r"^the ground truth has no object that is not difficult \(iscrowd\): "
                                          r"VOC07 AP is undefined$"):
        voc07_ap50(truth((1, 1, A, True)), [])
    with pytest.raises(FrelonError, match=r"^detections name image ids \[3, 4, 5, 6, 7\] or category ids \[\] that "
                                          r"the ground truth lacks; use its ids$"):
        voc07_ap50(GT, [det(i, 1, A, 0.5) for i in range(3, 10)])
    with pytest.raises(FrelonError, match=r"image ids \[\] or category ids \[3, 4, 5, 6, 7\] that"):
        voc07_ap50(GT, [det(1, c, A, 0.5) for c in range(3, 10)])
