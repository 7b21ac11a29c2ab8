"""Pascal VOC to COCO JSON: the detection study scores VOC with pycocotools like COCO.

VOC boxes are 1-based, inclusive pixel indices (`xmin`..`xmax`); in COCO's continuous coordinates
with the origin at the top-left corner of the first pixel, that box is
`[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]`. Objects marked `difficult` are kept as
`iscrowd: 1`, which COCOeval ignores (a detection on them is neither a hit nor a false positive),
close to the VOC rule (COCOeval matches a crowd region by the share of the detection inside it, so
a small detection within a large difficult box is ignored too, where VOC counts it as a false
positive). Category ids are 1..20 in the canonical VOC order.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from frelon.atomic import atomic_dir, write_json
from frelon.data.coco import summary, training_targets
from frelon.errors import FrelonError

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")


def parse_sets(text: str) -> list[tuple[str, str]]:
    """`2007:trainval,2012:trainval` -> [("2007", "trainval"), ("2012", "trainval")]."""
    sets = []
    for item in text.split(","):
        year, _, image_set = item.strip().partition(":")
        if not year or not image_set:
            raise FrelonError(f"--sets: {item!r} is not YEAR:SET (e.g. 2007:test or 2007:trainval,2012:trainval)")
        sets.append((year, image_set))
    return sets


def _number(node: ET.Element, tag: str, where: str) -> float:
    child = node.find(tag)
    if child is None or child.text is None:
        raise FrelonError(f"{where}: no <{tag}>; the annotation file is incomplete")
    try:
        return float(child.text)
    except ValueError:
        raise FrelonError(f"{where}: <{tag}> is {child.text!r}, not a number; fix the annotation file") from None


def read_annotation(path: str | os.PathLike) -> dict:
    """One VOC XML file: image size and objects (name, 1-based box, difficult)."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise FrelonError(f"{path} is not valid XML ({exc}): a damaged annotation file; extract the archive "
                          f"again, or fix the file") from None
    size = root.find("size")
    if size is None:
        raise FrelonError(f"{path}: no <size>; the annotation file is incomplete")
    objects = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            raise FrelonError(f"{path}: unknown class {name!r}; VOC's classes are {', '.join(VOC_CLASSES)}")
        box = obj.find("bndbox")
        if box is None:
            raise FrelonError(f"{path}: object {name!r} has no <bndbox>")
        objects.append({
            "name": name,
            "box": tuple(_number(box, tag, str(path)) for tag in ("xmin", "ymin", "xmax", "ymax")),
            "difficult": (obj.findtext("difficult") or "0").strip() == "1",
        })
    return {"filename": root.findtext("filename"), "width": int(_number(size, "width", str(path))),
            "height": int(_number(size, "height", str(path))), "objects": objects}


def voc_box_to_coco(box: tuple[float, float, float, float]) -> list[float]:
    xmin, ymin, xmax, ymax = box
    return [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]


def to_coco(devkit: str | os.PathLike, sets: list[tuple[str, str]]) -> dict:
    """A COCO detection dict for the images of `sets` in a VOCdevkit folder; file names are relative
    to the devkit (`VOC2007/JPEGImages/000005.jpg`)."""
    devkit = Path(devkit)
    images, annotations = [], []
    for year, image_set in sets:
        base = devkit / f"VOC{year}"
        listing = base / "ImageSets" / "Main" / f"{image_set}.txt"
        if not listing.exists():
            raise FrelonError(f"{listing} not found: is {devkit} a VOCdevkit folder with VOC{year} "
                              f"and its {image_set} set? (the folder the official tar extracts to)")
        stems = listing.read_text().split()
        if not stems:
            raise FrelonError(f"{listing} lists no images: an empty or truncated file; extract the archive again")
        for stem in stems:
            xml = base / "Annotations" / f"{stem}.xml"
            if not xml.exists():
                raise FrelonError(f"{xml} not found, though {listing} lists {stem}: extract the archives completely "
                                  f"(or remove {stem} from the list)")
            ann = read_annotation(xml)
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": f"VOC{year}/JPEGImages/{stem}.jpg",
                           "width": ann["width"], "height": ann["height"]})
            for obj in ann["objects"]:
                x, y, w, h = voc_box_to_coco(obj["box"])
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": VOC_CLASSES.index(obj["name"]) + 1, "bbox": [x, y, w, h],
                                    "area": w * h, "iscrowd": int(obj["difficult"])})
    categories = [{"id": i + 1, "name": name, "supercategory": "voc"} for i, name in enumerate(VOC_CLASSES)]
    return {"info": {"description": "Pascal VOC " + ",".join(f"{y}:{s}" for y, s in sets)},
            "images": images, "annotations": annotations, "categories": categories}


def write_coco(devkit: str | os.PathLike, sets: list[tuple[str, str]], out: str | os.PathLike) -> dict:
    coco = to_coco(devkit, sets)
    write_json(out, coco)
    return coco


def prepare(devkit: str | os.PathLike, out_dir: str | os.PathLike, train_sets: str, val_sets: str) -> dict:
    """`out_dir/{train,val}.json` (COCO format) from a VOCdevkit folder, e.g. train 2007:trainval,2012:trainval
    and val 2007:test, `splits.json` (where each split's annotations and images are) and `report.json`
    (images, objects, difficult objects, mended boxes per split)."""

    devkit, out_dir = Path(devkit), Path(out_dir)
    report = {"devkit": str(devkit), "splits": {}}
    with atomic_dir(out_dir) as work:
        for split, sets in (("train", train_sets), ("val", val_sets)):
            coco = write_coco(devkit, parse_sets(sets), work / f"{split}.json")
            missing = [im["file_name"] for im in coco["images"] if not (devkit / im["file_name"]).exists()]
            if missing:
                raise FrelonError(f"{len(missing)} image(s) of {sets} are missing from {devkit}, e.g. {missing[:3]}; "
                                  f"extract the archives completely")
            _, images = training_targets(work / f"{split}.json")
            report["splits"][split] = {"sets": sets, **summary(images)}
        write_json(work / "splits.json", {split: {"annotations": f"{split}.json", "images": str(devkit)}
                                          for split in ("train", "val")})
        write_json(work / "report.json", report)
    return report
