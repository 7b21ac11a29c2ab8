"""COCO mAP with pycocotools: the 12 summary numbers of COCOeval, by name."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

from frelon.errors import FrelonError

STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def coco_eval(gt: str | os.PathLike, detections: str | os.PathLike | list, quiet: bool = False) -> dict[str, float]:
    """Score `detections` (COCO results: image_id, category_id, bbox [x, y, w, h], score) against
    the ground truth file `gt`; returns AP, AP50, AP75, APs/m/l and AR1/10/100, ARs/m/l."""
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
        print(f"{detections}: no detections; every score is 0", flush=True)
        return dict.fromkeys(STATS, 0.0)
    results = [dict(r) for r in results]  # loadRes adds keys to the dicts it is given
    unknown_images = {r["image_id"] for r in results} - set(truth.getImgIds())
    unknown_categories = {r["category_id"] for r in results} - set(truth.getCatIds())
    if unknown_images or unknown_categories:
        raise FrelonError(f"{detections}: image ids {sorted(unknown_images)[:5]} or category ids "
                          f"{sorted(unknown_categories)[:5]} are not in {gt}; results must use the ground "
                          f"truth's ids (COCO's original category ids, not a contiguous index)")
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        evaluator = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    if not quiet:  # the 12 summary lines, without pycocotools' progress chatter
        print("".join(line for line in printed.getvalue().splitlines(keepends=True) if line.startswith(" Average")),
              end="")
    return {name: float(value) for name, value in zip(STATS, evaluator.stats)}
