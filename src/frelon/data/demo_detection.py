"""Generated detection data in the real archive layouts: Pascal VOC tars and COCO 2017 zips.

The demo (and the tests) run the same download -> verify -> extract -> convert path as the real
datasets: these writers produce the official archive names and folder layouts, with simple shapes
as objects and annotations that match them pixel for pixel.
"""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
import zipfile
from pathlib import Path
from xml.sax.saxutils import escape

from PIL import Image, ImageDraw

from frelon.data.voc import VOC_CLASSES

# The official archives: name -> the (year, image sets) it holds
VOC_ARCHIVES = {
    "VOCtrainval_06-Nov-2007.tar": ("2007", ("trainval",)),
    "VOCtest_06-Nov-2007.tar": ("2007", ("test",)),
    "VOCtrainval_11-May-2012.tar": ("2012", ("trainval",)),
}
COCO_ARCHIVES = ("train2017.zip", "val2017.zip", "annotations_trainval2017.zip")
# A few real COCO categories: ids with gaps, as in instances_*.json
COCO_CATEGORIES = [{"id": 1, "name": "person", "supercategory": "person"},
                   {"id": 3, "name": "car", "supercategory": "vehicle"},
                   {"id": 18, "name": "dog", "supercategory": "animal"},
                   {"id": 44, "name": "bottle", "supercategory": "kitchen"},
                   {"id": 90, "name": "toothbrush", "supercategory": "indoor"}]
COLOURS = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 200, 30), (160, 60, 200), (30, 200, 200)]


def _overlaps(box: tuple[int, int, int, int], objects: list[tuple]) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 <= b[3] and b[1] <= x1 and y0 <= b[4] and b[2] <= y1 for b in objects)


def _scene(rng: random.Random, width: int, height: int, n_objects: int, n_classes: int, attempts: int = 10):
    """An image with up to `n_objects` filled shapes that do not overlap (an object hidden under
    another would be annotated but invisible); boxes as inclusive 0-based pixel bounds."""
    image = Image.new("RGB", (width, height), tuple(rng.randint(90, 140) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    objects: list[tuple] = []
    for _ in range(n_objects * attempts):
        if len(objects) == n_objects:
            break
        w, h = rng.randint(width // 6, width // 2), rng.randint(height // 6, height // 2)
        x0, y0 = rng.randint(0, width - w), rng.randint(0, height - h)
        if _overlaps((x0, y0, x0 + w - 1, y0 + h - 1), objects):
            continue
        label = rng.randrange(n_classes)
        shape = draw.rectangle if label % 2 == 0 else draw.ellipse
        shape([x0, y0, x0 + w - 1, y0 + h - 1], fill=COLOURS[label % len(COLOURS)])
        objects.append((label, x0, y0, x0 + w - 1, y0 + h - 1))
    return image, objects


def _voc_xml(stem: str, year: str, width: int, height: int, objects: list[tuple], rng: random.Random) -> str:
    parts = [f"<annotation><folder>VOC{year}</folder><filename>{stem}.jpg</filename>",
             f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
    for label, x0, y0, x1, y1 in objects:
        difficult = int(rng.random() < 0.15)
        parts.append(f"<object><name>{escape(VOC_CLASSES[label])}</name><pose>Unspecified</pose>"
                     f"<truncated>0</truncated><difficult>{difficult}</difficult><bndbox>"
                     f"<xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin><xmax>{x1 + 1}</xmax><ymax>{y1 + 1}</ymax>"
                     f"</bndbox></object>")
    return "".join(parts) + "</annotation>\n"


def write_voc_archives(out_dir: str | os.PathLike, images_per_set: int = 12, size: int = 96,
                       n_classes: int = 6, seed: int = 0) -> dict[str, Path]:
    """The three official VOC tars (2007 trainval and test, 2012 trainval), each extracting to
    `VOCdevkit/VOC<year>/{Annotations,ImageSets/Main,JPEGImages}`; returns name -> path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    written = {}
    for name, (year, image_sets) in VOC_ARCHIVES.items():
        path = out_dir / name
        with tarfile.open(path, "w") as tar:
            for image_set in image_sets:
                offset = 0 if image_set != "test" else 5000
                stems = [f"{year}_{offset + i:06d}" if year == "2012" else f"{offset + i:06d}"
                         for i in range(images_per_set)]
                _add(tar, f"VOCdevkit/VOC{year}/ImageSets/Main/{image_set}.txt", "\n".join(stems) + "\n")
                for stem in stems:
                    width, height = size + rng.randint(0, size // 2), size
                    image, objects = _scene(rng, width, height, rng.randint(1, 3), n_classes)
                    _add(tar, f"VOCdevkit/VOC{year}/JPEGImages/{stem}.jpg", _jpeg(image))
                    _add(tar, f"VOCdevkit/VOC{year}/Annotations/{stem}.xml",
                         _voc_xml(stem, year, width, height, objects, rng))
        written[name] = path
    return written


def write_coco_archives(out_dir: str | os.PathLike, train: int = 16, val: int = 8, size: int = 96,
                        seed: int = 0) -> dict[str, Path]:
    """train2017.zip, val2017.zip and annotations_trainval2017.zip in the official layout, with
    non-contiguous category ids and a crowd region now and then; returns name -> path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    annotations = {}
    written = {}
    next_image, next_ann = 1, 1
    for split, count in (("train2017", train), ("val2017", val)):
        images, anns = [], []
        with zipfile.ZipFile(out_dir / f"{split}.zip", "w") as zf:
            for _ in range(count):
                width, height = size + rng.randint(0, size // 2), size
                image, objects = _scene(rng, width, height, rng.randint(1, 3), len(COCO_CATEGORIES))
                file_name = f"{next_image:012d}.jpg"
                zf.writestr(f"{split}/{file_name}", _jpeg(image))
                images.append({"id": next_image, "file_name": file_name, "width": width, "height": height})
                for label, x0, y0, x1, y1 in objects:
                    w, h = x1 - x0 + 1, y1 - y0 + 1
                    anns.append({"id": next_ann, "image_id": next_image, "category_id": COCO_CATEGORIES[label]["id"],
                                 "bbox": [x0, y0, w, h], "area": w * h, "iscrowd": int(rng.random() < 0.1),
                                 "segmentation": [[x0, y0, x0 + w, y0, x0 + w, y0 + h, x0, y0 + h]]})
                    next_ann += 1
                next_image += 1
        written[f"{split}.zip"] = out_dir / f"{split}.zip"
        annotations[split] = {"info": {"description": "generated COCO-style set"}, "licenses": [],
                              "images": images, "annotations": anns, "categories": COCO_CATEGORIES}
    with zipfile.ZipFile(out_dir / "annotations_trainval2017.zip", "w") as zf:
        for split, data in annotations.items():
            zf.writestr(f"annotations/instances_{split}.json", json.dumps(data))
    written["annotations_trainval2017.zip"] = out_dir / "annotations_trainval2017.zip"
    return written


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: str | bytes) -> None:
    raw = data.encode() if isinstance(data, str) else data
    info = tarfile.TarInfo(name)
    info.size = len(raw)
    info.mtime = 0  # reproducible archives: the same seed gives the same bytes
    tar.addfile(info, io.BytesIO(raw))
