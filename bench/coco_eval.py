"""COCO evaluation time: 5,000 images' detections through frelon's scoring entry point (pycocotools).

    python bench/coco_eval.py                     # 5,000 images, 100 detections each
    python bench/coco_eval.py --images 200        # quick

The ground truth is COCO val2017-sized and -shaped, but generated: 5,000 images of 640 x 480, about
7 objects each (COCO's mean is 7.3) of the 80 category ids with COCO's gaps, 1% crowd regions. The
detections are what CenterNet hands in: its top 100 per image, some near the true boxes with high
scores, the rest anywhere with low ones. Timed: `frelon.evaluate.detection.coco_eval` on the list
(as a training run's validation calls it): loading the ground truth, the checks, loadRes, evaluate,
accumulate, summarize. CPU only; no target (a reference for how long a validation's scoring takes).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import common

MISSING_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}  # COCO's 80 categories: ids 1-90 less these
CATEGORIES = [i for i in range(1, 91) if i not in MISSING_IDS]


def box(rng: random.Random, width: int, height: int) -> list[float]:
    w, h = rng.uniform(8, width / 2), rng.uniform(8, height / 2)
    return [round(rng.uniform(0, width - w), 2), round(rng.uniform(0, height - h), 2), round(w, 2), round(h, 2)]


def synthetic(images: int, per_image: int, seed: int = 0) -> tuple[dict, list[dict]]:
    rng = random.Random(seed)
    truth = {"images": [], "annotations": [], "categories": [{"id": c, "name": f"c{c}"} for c in CATEGORIES]}
    detections = []
    for image_id in range(1, images + 1):
        truth["images"].append({"id": image_id, "width": 640, "height": 480, "file_name": f"{image_id:012d}.jpg"})
        objects = [(rng.choice(CATEGORIES), box(rng, 640, 480)) for _ in range(rng.randint(1, 13))]
        for category, (x, y, w, h) in objects:
            truth["annotations"].append({"id": len(truth["annotations"]) + 1, "image_id": image_id,
                                         "category_id": category, "bbox": [x, y, w, h], "area": w * h,
                                         "iscrowd": int(rng.random() < 0.01)})
        for k in range(per_image):
            if k < len(objects):  # a detection of object k, a little off
                category, (x, y, w, h) = objects[k]
                found = [x + rng.gauss(0, w / 10), y + rng.gauss(0, h / 10), w * rng.uniform(0.8, 1.2),
                         h * rng.uniform(0.8, 1.2)]
                score = rng.uniform(0.3, 0.95)
            else:
                category, found, score = rng.choice(CATEGORIES), box(rng, 640, 480), rng.uniform(0.001, 0.3)
            detections.append({"image_id": image_id, "category_id": category,
                               "bbox": [round(v, 2) for v in found], "score": round(score, 5)})
    return truth, detections


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--per-image", type=int, default=100, help="detections per image (CenterNet's top-k)")
    common.arguments(parser, "coco_eval")
    args = parser.parse_args()
    metric = f"COCO eval of {args.images} images x {args.per_image} detections"
    if reason := common.missing("pycocotools", "numpy"):
        return common.skip(args, "coco_eval", reason, [metric])
    from frelon.evaluate.detection import coco_eval

    truth, detections = synthetic(args.images, args.per_image)
    with tempfile.TemporaryDirectory() as tmp:
        gt = Path(tmp) / "instances_val.json"
        gt.write_text(json.dumps(truth))
        start = time.perf_counter()
        scores = coco_eval(gt, detections, quiet=True)
        seconds = time.perf_counter() - start
    rows = [common.row(metric, round(seconds, 1), "s"),
            common.row("COCO eval per 1,000 images", round(1000 * seconds / args.images, 2), "s")]
    common.write(args, "coco_eval", rows, images=args.images, detections=len(detections),
                 objects=len(truth["annotations"]), seconds=round(seconds, 2), AP=round(scores["AP"], 4))
    return 0


if __name__ == "__main__":
    sys.exit(main())
