"""COCO mAP with pycocotools: the 12 summary numbers of COCOeval, by name; and VOC07 AP50 beside it."""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from frelon.errors import FrelonError

STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def coco_eval(gt: str | os.PathLike, detections: str | os.PathLike | list, quiet: bool = False) -> dict[str, float]:
    """Score `detections` (COCO results: image_id, category_id, bbox [x, y, w, h], score) against
    the ground truth file `gt`; returns AP, AP50, AP75, APs/m/l and AR1/10/100, ARs/m/l."""
    return coco_summary(gt, [coco_tables(gt, detections)], quiet)


def coco_tables(gt: str | os.PathLike, detections: str | os.PathLike | list, part: int = 0,
                parts: int = 1) -> dict | None:
    """COCOeval's precision, recall and score tables for the categories `part`, `part + parts`, ... of
    `gt` (None when there are no detections at all). COCOeval evaluates and accumulates each category on
    its own, so the parts, computed by as many processes, join into the tables of one whole evaluation
    (`coco_summary`): N ranks score COCO in about 1/N of the time."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(gt))
    results = json.loads(Path(detections).read_text()) if not isinstance(detections, list) else detections
    keys = {"image_id", "category_id", "bbox", "score"}
    if not isinstance(results, list) or not all(isinstance(r, dict) and keys <= r.keys() for r in results):
        raise FrelonError(f"{detections} is not a COCO results file: expected a JSON list of "
                          f"{{image_id, category_id, bbox: [x, y, w, h], score}} (a ground-truth file is not one)")
    if not results:  # pycocotools cannot load an empty result list; nothing detected scores 0
        return None
    results = [dict(r) for r in results]  # loadRes adds keys to the dicts it is given
    unknown_images = {r["image_id"] for r in results} - set(truth.getImgIds())
    unknown_categories = {r["category_id"] for r in results} - set(truth.getCatIds())
    if unknown_images or unknown_categories:
        raise FrelonError(f"{detections}: image ids {sorted(unknown_images)[:5]} or category ids "
                          f"{sorted(unknown_categories)[:5]} are not in {gt}; results must use the ground "
                          f"truth's ids (COCO's original category ids, not a contiguous index)")
    mine = sorted(truth.getCatIds())[part::parts]
    if not mine:
        return {"categories": [], "precision": None, "recall": None, "scores": None}
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluator.params.catIds = mine
        evaluator.evaluate()
        evaluator.accumulate()
    return {"categories": evaluator.params.catIds, **{k: evaluator.eval[k] for k in ("precision", "recall", "scores")}}


def coco_summary(gt: str | os.PathLike, tables: list[dict | None], quiet: bool = False) -> dict[str, float]:
    """COCOeval's 12 summary numbers from the tables of every category (`coco_tables`, in parts)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if any(t is None for t in tables):
        print(f"{gt}: no detections; every score is 0", flush=True)
        return dict.fromkeys(STATS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(COCO(str(gt)), None, "bbox")
    p = evaluator.params
    column = {category: k for k, category in enumerate(p.catIds)}
    T, R, K, A, M = len(p.iouThrs), len(p.recThrs), len(p.catIds), len(p.areaRng), len(p.maxDets)
    whole = {"precision": -np.ones((T, R, K, A, M)), "recall": -np.ones((T, K, A, M)),
             "scores": -np.ones((T, R, K, A, M))}
    for part in tables:
        ks = [column[c] for c in part["categories"]]
        for name, table in whole.items():
            if ks:
                table[..., ks, :, :] = part[name]
    evaluator.eval = {"params": p, "counts": [T, R, K, A, M], **whole}
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        evaluator.summarize()
    if not quiet:  # the 12 summary lines, without pycocotools' progress chatter
        print("".join(line for line in printed.getvalue().splitlines(keepends=True) if line.startswith(" Average")),
              end="")
    return {name: float(value) for name, value in zip(STATS, evaluator.stats)}


TP, FP, IGNORED = 1, 0, -1


def _voc_boxes(coco_boxes: list) -> np.ndarray:
    """COCO [x, y, w, h] back to VOC's 1-based inclusive [xmin, ymin, xmax, ymax], where the devkit's IoU holds."""
    b = np.asarray(coco_boxes, dtype=float).reshape(-1, 4)
    return np.stack([b[:, 0] + 1, b[:, 1] + 1, b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]], axis=1)


def _inclusive_area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[..., 2] - boxes[..., 0] + 1) * (boxes[..., 3] - boxes[..., 1] + 1)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box with many in the devkit's convention: pixels are inclusive, so a side is max - min + 1."""
    iw = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]) + 1
    ih = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]) + 1
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    return inter / (_inclusive_area(box) + _inclusive_area(boxes) - inter)


def _truths_by_image(annotations: list[dict]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """One class's ground truth, per image: VOC boxes and difficult flags (stored as iscrowd)."""
    per_image = defaultdict(list)
    for ann in annotations:
        per_image[ann["image_id"]].append(ann)
    return {image: (_voc_boxes([a["bbox"] for a in anns]), np.array([bool(a.get("iscrowd", 0)) for a in anns]))
            for image, anns in per_image.items()}


def _outcomes(detections: list[dict], truths: dict[int, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The devkit's greedy matching: by descending score, each detection takes the box it overlaps most;
    TP if that box is new, FP if it was taken or the overlap is 0.5 or less (the devkit's `ovmax > ovthresh`),
    ignored if it is difficult."""
    detections = sorted(detections, key=lambda d: -d["score"])
    boxes = _voc_boxes([d["bbox"] for d in detections])
    taken = {image: np.zeros(len(flags), dtype=bool) for image, (_, flags) in truths.items()}
    outcomes = np.full(len(detections), FP)
    for i, det in enumerate(detections):
        if det["image_id"] not in truths:
            continue
        gt_boxes, difficult = truths[det["image_id"]]
        overlaps = _iou(boxes[i], gt_boxes)
        best = int(np.argmax(overlaps))
        if overlaps[best] <= 0.5:
            continue
        if difficult[best]:
            outcomes[i] = IGNORED
        elif not taken[det["image_id"]][best]:
            outcomes[i] = TP
            taken[det["image_id"]][best] = True
    return outcomes


def _eleven_point_ap(outcomes: np.ndarray, positives: int) -> float:
    """VOC07's AP: the best precision at recall >= t, averaged over t = 0, 0.1, ..., 1."""
    counted = outcomes[outcomes != IGNORED]
    true_positives = np.cumsum(counted == TP)
    precision = true_positives / np.arange(1, len(counted) + 1)
    recall = true_positives / positives
    thresholds = np.arange(11) / 10  # exact tenths: a recall of 3/10 reaches t = 0.3 (0.1 * 3 is above it)
    return float(np.mean([precision[recall >= t].max(initial=0.0) for t in thresholds]))


def _by_category(items: list[dict]) -> dict[int, list[dict]]:
    groups = defaultdict(list)
    for item in items:
        groups[item["category_id"]].append(item)
    return groups


def voc07_ap50(gt: str | os.PathLike | dict, detections: list[dict]) -> dict:
    """Pascal VOC07 11-point AP at IoU 0.5, only to compare with the CenterNet paper's VOC table
    (pycocotools stays the reference). `gt` is COCO JSON from `frelon.data.voc` (difficult = iscrowd)."""
    truth = gt if isinstance(gt, dict) else json.loads(Path(gt).read_text())
    names = {c["id"]: c["name"] for c in truth["categories"]}
    unknown_images = {d["image_id"] for d in detections} - {im["id"] for im in truth["images"]}
    unknown_categories = {d["category_id"] for d in detections} - names.keys()
    if unknown_images or unknown_categories:
        raise FrelonError(f"detections name image ids {sorted(unknown_images)[:5]} or category ids "
                          f"{sorted(unknown_categories)[:5]} that the ground truth lacks; use its ids")
    truths, found = _by_category(truth["annotations"]), _by_category(detections)
    per_class = {}
    for category, name in names.items():
        by_image = _truths_by_image(truths[category])
        positives = sum(int((~difficult).sum()) for _, difficult in by_image.values())
        if positives:  # a class with no non-difficult object has no recall: VOC leaves it out of the mean
            per_class[name] = _eleven_point_ap(_outcomes(found[category], by_image), positives)
    if not per_class:
        raise FrelonError("the ground truth has no object that is not difficult (iscrowd): VOC07 AP is undefined")
    return {"AP50_voc07": float(np.mean(list(per_class.values()))), "per_class": per_class}
