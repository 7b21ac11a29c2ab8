"""Detection data in the official layouts (generated VOC tars, COCO zips) and small detection specs."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from PIL import Image

from conftest import REPO
from frelon import spec as frelon_spec
from frelon.data import archives, voc
from frelon.data.demo_detection import write_coco_archives, write_voc_archives


def voc_devkit(root: Path, images_per_set: int = 10, size: int = 96) -> Path:
    """The three VOC tars extracted into one VOCdevkit folder, as a user who untars them in one place has it."""
    for path in write_voc_archives(root / "archives", images_per_set=images_per_set, size=size).values():
        archives.extract(path, root / "extracted" / path.stem)
    devkit = root / "VOCdevkit"
    for part in sorted((root / "extracted").iterdir()):
        for year in (part / "VOCdevkit").iterdir():
            for sub in year.rglob("*"):
                if sub.is_file():
                    dest = devkit / year.name / sub.relative_to(year)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    sub.replace(dest)
    return devkit


def coco_folder(root: Path) -> Path:
    """The three COCO 2017 zips extracted into one folder (train2017/, val2017/, annotations/)."""
    (root / "coco").mkdir(parents=True)
    for name, path in write_coco_archives(root / "archives").items():
        archives.extract(path, root / "parts" / name)
        for item in (root / "parts" / name).iterdir():  # each zip holds one top folder
            item.replace(root / "coco" / item.name)
    return root / "coco"


def prepared_voc(root: Path, images_per_set: int = 8) -> Path:
    voc.prepare(voc_devkit(root, images_per_set, size=64), root / "prepared", "2007:trainval,2012:trainval",
                "2007:test")
    return root / "prepared"


def detection_spec(prepared: Path, out: Path, **train) -> dict:
    """The demo's detection/voc-unet spec on `prepared`, writing to `out`, random init, with `train` overrides."""
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    spec = frelon_spec.resolve(config, "results/runs/detection/voc-unet")
    spec["data"]["dir"] = str(prepared)
    spec["model"].update(weights=None, weights_path=None)
    spec["output"] = str(out)
    spec["train"].update({"checkpoint_minutes": 0, **train})  # a state at every epoch end, as resume tests expect
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_text(json.dumps(spec))
    return spec


def prepared_pictures(root: Path, pictures: list[tuple[Image.Image, list[list[float]], list[int]]],
                      suffix: str = ".jpg") -> Path:
    """A prepared detection set whose train and val splits both hold `pictures`: (image, XYWH boxes,
    category ids from 1..3), saved as `suffix` files (JPEG at quality 95)."""
    root.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, (image, boxes, categories) in enumerate(pictures):
        image.save(root / f"{i:04d}{suffix}", quality=95)
        images.append({"id": i + 1, "file_name": f"{i:04d}{suffix}", "width": image.width, "height": image.height})
        annotations += [{"id": len(annotations) + 1, "image_id": i + 1, "category_id": category, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0} for box, category in zip(boxes, categories)]
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": c, "name": f"class{c}"} for c in (1, 2, 3)]}
    (root / "annotations.json").write_text(json.dumps(coco))
    (root / "splits.json").write_text(json.dumps({split: {"annotations": "annotations.json", "images": str(root)}
                                                  for split in ("train", "val")}))
    return root
