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


def training_targets(annotation_file: str | os.PathLike) -> tuple[CategoryIndex, dict[int, dict]]:
    """Per image: file name, size, boxes `[x, y, w, h]` and contiguous labels of its non-crowd
    objects; crowd regions and boxes without area are left out of training targets (and counted)."""
    coco = json.loads(Path(annotation_file).read_text())
    index = CategoryIndex(coco["categories"])
    images = {im["id"]: {"file_name": im["file_name"], "width": im["width"], "height": im["height"],
                         "boxes": [], "labels": [], "crowd": 0, "empty_boxes": 0} for im in coco["images"]}
    for ann in coco["annotations"]:
        image = images.get(ann["image_id"])
        if image is None:
            raise FrelonError(f"{annotation_file}: annotation {ann['id']} refers to image {ann['image_id']}, "
                              f"which the file does not list")
        if ann.get("iscrowd", 0):
            image["crowd"] += 1
            continue
        x, y, w, h = ann["bbox"]
        if w <= 0 or h <= 0:  # a few COCO boxes have no area: nothing to learn from, counted
            image["empty_boxes"] += 1
            continue
        image["boxes"].append([x, y, w, h])
        image["labels"].append(index.index(ann["category_id"]))
    return index, images


def prepare(root: str | os.PathLike, out_dir: str | os.PathLike, splits: tuple[str, ...] = SPLITS) -> dict:
    """Check an extracted COCO folder and write `out_dir`: `<split>.json` (the annotations, as
    published: results are scored against them), `categories.json` (training index -> id, name) and
    `report.json` (images, objects, crowd regions, boxes without area, per split)."""
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
            report["splits"][split] = {
                "images": len(images), "objects": sum(len(im["labels"]) for im in images.values()),
                "crowd_regions": sum(im["crowd"] for im in images.values()),
                "boxes_without_area": sum(im["empty_boxes"] for im in images.values()),
                "images_without_objects": sum(not im["labels"] for im in images.values())}
        write_json(work / "categories.json", [{"index": i, "id": cid, "name": name}
                                              for i, (cid, name) in enumerate(zip(index.ids, index.names))])
        write_json(work / "report.json", report)
    return report
