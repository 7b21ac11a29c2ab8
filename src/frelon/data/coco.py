"""COCO 2017 as the detection study uses it: a checked layout, a contiguous class index for
training, the original category ids for results, and crowd regions kept out of training targets.

COCO's 80 categories have ids between 1 and 90 with gaps; a network predicts 80 channels, so
training uses the index of a category in id order (0..79) and results go back to the id.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from frelon.errors import FrelonError

SPLITS = ("train2017", "val2017")


def check_layout(root: str | os.PathLike, splits: tuple[str, ...] = SPLITS) -> dict[str, Path]:
    """`{split: annotation file}` for a folder laid out as the official zips extract
    (`train2017/`, `val2017/`, `annotations/instances_<split>.json`)."""
    root = Path(root)
    found = {}
    for split in splits:
        images, annotations = root / split, root / "annotations" / f"instances_{split}.json"
        missing = [str(p) for p in (images, annotations) if not p.exists()]
        if missing:
            raise FrelonError(f"COCO folder {root} lacks {', '.join(missing)}: extract {split}.zip and "
                              f"annotations_trainval2017.zip into it (the official layout)")
        found[split] = annotations
    return found


class CategoryIndex:
    """Contiguous training index <-> COCO category id, in id order."""

    def __init__(self, categories: list[dict]):
        self.ids = sorted(c["id"] for c in categories)
        self.names = [next(c["name"] for c in categories if c["id"] == i) for i in self.ids]
        self._index = {cid: i for i, cid in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, category_id: int) -> int:
        return self._index[category_id]

    def category_id(self, index: int) -> int:
        return self.ids[index]

    def name(self, category_id: int) -> str:
        return self.names[self._index[category_id]]


CLIP_TOLERANCE = 1e-6 * 4096  # pixels: float64 round-off on coordinates of images up to thousands of pixels


def _clip(box: list[float], width: int, height: int) -> list[float]:
    """An `[x, y, w, h]` box cut to the image; zero width or height when nothing is left inside."""
    x, y, w, h = box
    x0, y0, x1, y1 = max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h)
    return [x0, y0, max(0.0, x1 - x0), max(0.0, y1 - y0)]


def training_targets(annotation_file: str | os.PathLike,
                     crowd: str = "drop") -> tuple[CategoryIndex, dict[int, dict]]:
    """Per image: file name, size, boxes `[x, y, w, h]` and contiguous labels of its objects. Crowd
    regions (and VOC's difficult objects, stored as crowd) are counted, and trained on as objects with
    `crowd="train"` (the official CenterNet reads every annotation) or left out of the targets with
    `"drop"`; boxes reaching outside the image are clipped, and boxes without area (from the start, or
    after clipping) are dropped: each of these is counted per image."""
    try:
        coco = json.loads(Path(annotation_file).read_text())
    except json.JSONDecodeError as exc:
        raise FrelonError(f"{annotation_file} is not valid JSON ({exc}): a damaged or truncated annotation file; "
                          f"extract or convert it again") from None
    try:
        return _targets(coco, annotation_file, crowd)
    except KeyError as exc:  # an entry without a field every COCO image or annotation has
        raise FrelonError(f"{annotation_file}: an image, annotation or category has no {exc.args[0]!r}; not a COCO "
                          f"instances file, or a damaged one: extract or convert it again") from None


def _targets(coco: dict, annotation_file: str | os.PathLike, crowd: str) -> tuple[CategoryIndex, dict[int, dict]]:
    """`training_targets` of the file's parsed contents."""
    if not isinstance(coco, dict) or not coco.get("images") or not coco.get("categories"):
        raise FrelonError(f"{annotation_file} lists no images or no categories: an empty or truncated annotation "
                          f"file; extract or convert it again")
    index = CategoryIndex(coco["categories"])
    images = {im["id"]: {"file_name": im["file_name"], "width": im["width"], "height": im["height"],
                         "boxes": [], "labels": [], "crowd": 0, "empty_boxes": 0, "clipped": 0}
              for im in coco["images"]}
    for ann in coco.get("annotations", []):
        image = images.get(ann["image_id"])
        if image is None:
            raise FrelonError(f"{annotation_file}: annotation {ann['id']} refers to image {ann['image_id']}, "
                              f"which the file does not list")
        if ann["category_id"] not in index.ids:
            raise FrelonError(f"{annotation_file}: annotation {ann['id']} has category id {ann['category_id']}, "
                              f"which the file's categories do not list ({index.ids})")
        if ann.get("iscrowd", 0):
            image["crowd"] += 1
            if crowd == "drop":
                continue
        box = _clip(ann["bbox"], image["width"], image["height"])
        if box[2] <= 0 or box[3] <= 0:  # no area inside the image: nothing to learn from, counted
            image["empty_boxes"] += 1
            continue
        # clipped only where a side moved by more than float round-off (x + w - x is not always w)
        image["clipped"] += any(abs(a - b) > CLIP_TOLERANCE for a, b in zip(box, map(float, ann["bbox"])))
        image["boxes"].append(box)
        image["labels"].append(index.index(ann["category_id"]))
    return index, images


def summary(images: dict[int, dict]) -> dict[str, int]:
    """What `training_targets` kept, left out and mended, for a prepared set's report."""
    return {"images": len(images), "objects": sum(len(im["labels"]) for im in images.values()),
            "crowd_or_difficult": sum(im["crowd"] for im in images.values()),
            "boxes_without_area": sum(im["empty_boxes"] for im in images.values()),
            "boxes_clipped_to_image": sum(im["clipped"] for im in images.values()),
            "images_without_objects": sum(not im["labels"] for im in images.values())}


def prepare(root: str | os.PathLike, out_dir: str | os.PathLike, splits: tuple[str, ...] = SPLITS) -> dict:
    """Check an extracted COCO folder and write `out_dir`: `<split>.json` (the annotations, as
    published: results are scored against them), `categories.json` (training index -> id, name),
    `splits.json` (where each split's annotations and images are) and `report.json` (images, objects,
    crowd regions, boxes without area or clipped to the image, per split)."""
    import shutil

    from frelon.atomic import atomic_dir, write_json

    files = check_layout(root, splits)
    out_dir = Path(out_dir)
    report = {"root": str(root), "splits": {}}
    with atomic_dir(out_dir) as work:
        for split, annotation_file in files.items():
            index, images = training_targets(annotation_file)
            missing = [im["file_name"] for im in images.values() if not (Path(root) / split / im["file_name"]).exists()]
            if missing:
                raise FrelonError(f"{len(missing)} image(s) listed in {annotation_file} are not in {Path(root) / split}, "
                                  f"e.g. {missing[:3]}; extract {split}.zip completely")
            shutil.copyfile(annotation_file, work / f"{split}.json")
            report["splits"][split] = summary(images)
        write_json(work / "splits.json", {name: {"annotations": f"{split}.json", "images": str(Path(root) / split)}
                                          for name, split in zip(("train", "val"), files)})
        write_json(work / "categories.json", [{"index": i, "id": cid, "name": name}
                                              for i, (cid, name) in enumerate(zip(index.ids, index.names))])
        write_json(work / "report.json", report)
    return report
