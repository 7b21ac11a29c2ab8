"""Your own detection data, as a YOLO export or as COCO JSON files, prepared like VOC and COCO.

Both give `data/prepared/<name>/` the layout the detection study reads: `train.json` and `val.json`
(COCO instances), `splits.json` (where each split's annotations and images are), `categories.json`
(training index -> category id, name) and `report.json` (what was kept, left out and mended, per split).

YOLO (Ultralytics, Roboflow): `data.yaml` names the classes (`names`, a list or `{id: name}`) and the
`train` and `val` images (a folder, a `.txt` list of images, or a list of these), relative to its `path`
key or to its own folder; without it, `images/{train,val}/` and the class names from the config. Each
image's label file is its path with the last `images` folder replaced by `labels` and the suffix by
`.txt` (YOLO's rule): a line `class cx cy w h` per object, normalised to [0, 1] of the upright image
(EXIF orientation applied, as YOLO reads images). Category ids are 1..N in YOLO's class order; boxes
become pixels `[x, y, w, h]` of the image as stored (the pixels the detection study reads), clipped
to it. A segmentation line (`class x1 y1 x2 y2 ...`, three points or more) becomes its polygon's
bounding box, as YOLO's detection training does. The `test` split, if any, is not used.

Every image is read in full: one missing, unreadable, or in train and val alike (the same bytes) is
an error, as is a label file without its image, a line that is not numbers, a value outside [0, 1] or
an unknown class. An image without a label file (or with an empty one) has no objects, and a box
without area is dropped: both are counted in report.json.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import shutil
from pathlib import Path

import yaml
from PIL import Image, UnidentifiedImageError

from frelon.atomic import atomic_dir, write_json
from frelon.data.coco import summary, training_targets
from frelon.errors import FrelonError

# YOLO's image suffixes (Ultralytics' IMG_FORMATS): one Pillow cannot read is refused as unreadable
IMAGE_SUFFIXES = {".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm", ".heic"}
TOLERANCE = 1e-6  # normalised values this far outside [0, 1] are round-off: clamped
SPLITS = ("train", "val")
EXAMPLES = 3  # files named in an error message
ORIENTATION = 0x0112  # the EXIF tag


def _examples(items: list) -> str:
    return ", ".join(map(str, items[:EXAMPLES])) + (", ..." if len(items) > EXAMPLES else "")


# Where a point of the upright image (normalised u, v) is in the image as stored, for each EXIF orientation
_TO_STORED = {1: lambda u, v: (u, v), 2: lambda u, v: (1 - u, v), 3: lambda u, v: (1 - u, 1 - v),
              4: lambda u, v: (u, 1 - v), 5: lambda u, v: (v, u), 6: lambda u, v: (v, 1 - u),
              7: lambda u, v: (1 - v, 1 - u), 8: lambda u, v: (1 - v, u)}
_TURNED = set(_TO_STORED) - {1}


def to_stored(orientation: int, cx: float, cy: float, w: float, h: float) -> tuple[float, float, float, float]:
    """A normalised YOLO box of the upright image in the image as stored (orientations 5-8 turn it a quarter)."""
    x, y = _TO_STORED.get(orientation, _TO_STORED[1])(cx, cy)
    return (x, y, h, w) if orientation in (5, 6, 7, 8) else (x, y, w, h)


def read_image(path: Path) -> dict:
    """Size as stored, EXIF orientation and SHA-1 of an image, decoded in full (a truncated file fails
    here, not in training); OSError and Pillow's errors for a file that is not a readable image."""
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        im.load()  # before getexif: a PNG may hold its EXIF after the pixels
        return {"width": im.width, "height": im.height, "orientation": im.getexif().get(ORIENTATION, 1),
                "sha1": hashlib.sha1(data).hexdigest()}


def read_images(paths: list[Path], listed_in: str) -> list[dict]:
    """`read_image` of every path; one FrelonError naming the missing and the unreadable ones."""
    found, missing, unreadable = [], [], []
    for path in paths:
        try:
            found.append(read_image(path))
        except FileNotFoundError:
            missing.append(path)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            unreadable.append(f"{path} ({type(exc).__name__}: {exc})")
    if missing:
        raise FrelonError(f"{len(missing)} image(s) listed in {listed_in} are missing, e.g. {_examples(missing)}; "
                          f"copy them there, or remove them from the list")
    if unreadable:
        raise FrelonError(f"{len(unreadable)} image(s) of {listed_in} cannot be read, e.g. {_examples(unreadable)}; "
                          f"replace them with readable copies (JPEG, PNG), or remove them and their labels")
    return found


def check_duplicates(hashes: dict[str, dict[str, Path]]) -> None:
    """Refuse an image (same bytes) in train and in val: scores on val would flatter the model."""
    both = [(path, hashes["train"][digest]) for digest, path in hashes["val"].items() if digest in hashes["train"]]
    if both:
        raise FrelonError(f"duplicates across splits: {len(both)} image(s) of val are also in train (the same "
                          f"file content), e.g. {_examples([f'{v} = {t}' for v, t in both])}; remove each from "
                          f"one of the splits")


def _hashes(paths: list[Path], infos: list[dict]) -> tuple[dict[str, Path], int]:
    """The first image of each content in a split, and how many images repeat one before them."""
    first: dict[str, Path] = {}
    for path, info in zip(paths, infos):
        first.setdefault(info["sha1"], path)
    return first, len(paths) - len(first)


def _write(work: Path, names: list[str], report: dict, splits: dict[str, str]) -> None:
    """splits.json, categories.json (ids 1..N in `names` order) and report.json into `work`."""
    write_json(work / "splits.json", {split: {"annotations": f"{split}.json", "images": images}
                                      for split, images in splits.items()})
    write_json(work / "categories.json", [{"index": i, "id": i + 1, "name": name} for i, name in enumerate(names)])
    write_json(work / "report.json", report)


# --- YOLO ---------------------------------------------------------------------------------------------------------


def read_data_yaml(root: Path) -> dict | None:
    """`root/data.yaml` (or `data.yml`) parsed, None when there is none."""
    for name in ("data.yaml", "data.yml"):
        path = root / name
        if path.exists():
            try:
                data = yaml.safe_load(path.read_text())
            except yaml.YAMLError as exc:
                raise FrelonError(f"{path} is not valid YAML ({exc}); fix it, or export the dataset again") from None
            if not isinstance(data, dict):
                raise FrelonError(f"{path} is not a mapping of keys (names, train, val); fix it, or export the "
                                  f"dataset again")
            return {**data, "yaml_file": path}
    return None


def class_names(data: dict | None, classes: list[str] | None, root: Path) -> list[str]:
    """The class names, in YOLO's class order: data.yaml's `names` (a list, or `{id: name}` for ids 0..N-1),
    else `classes`; both given, they must agree."""
    if data is None:
        if not classes:
            raise FrelonError(f"{root} has no data.yaml naming the classes: give them in the config "
                              f"(classes: [name of class 0, name of class 1, ...]) or with --classes")
        return list(classes)
    where, names = data["yaml_file"], data.get("names")
    if isinstance(names, dict):
        names = {int(k) if str(k).isdigit() else k: v for k, v in names.items()}
        if sorted(names, key=str) != sorted(range(len(names)), key=str):
            raise FrelonError(f"{where}: names has ids {sorted(names, key=str)}; YOLO's class ids run 0, 1, ..., "
                              f"N-1: number them so")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise FrelonError(f"{where} has no names (the class names, a list or {{id: name}}); add them")
    names = [str(n) for n in names]
    if len(set(names)) < len(names):
        raise FrelonError(f"{where}: names repeats a class name ({names}); give each class its own")
    if "nc" in data and data["nc"] != len(names):
        raise FrelonError(f"{where}: nc is {data['nc']} but names has {len(names)} classes; make them agree")
    if classes and list(classes) != names:
        raise FrelonError(f"the classes given ({list(classes)}) differ from the names in {where} ({names}); give "
                          f"the same names in the same order, or leave classes out")
    return names


def label_path(image: Path) -> Path:
    """YOLO's rule: the image's path with its last `images` folder replaced by `labels`, suffix `.txt`
    (beside the image when no folder is called `images`)."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _listed(entry: Path, base: Path) -> list[Path]:
    """The images of a `.txt` list: `./x` relative to the list's folder, other relative paths to the dataset's."""
    paths = []
    for line in entry.read_text().splitlines():
        line = line.strip()
        if line:
            paths.append(entry.parent / line[2:] if line.startswith("./") else base / line)
    return paths


def split_entries(root: Path, data: dict | None, split: str) -> tuple[list[Path], Path]:
    """The folders or `.txt` lists of a split, and the folder they were found from. data.yaml's entries are
    relative to its `path` (when that exists here) or to its own folder; `../x` is tried as `x` too (as
    Ultralytics does for Roboflow's exports)."""
    if data is None:
        folder = root / "images" / split
        if not folder.is_dir():
            raise FrelonError(f"{root} has no data.yaml and no images/{split}/ folder: give the YOLO export's "
                              f"data.yaml, or lay the images out in images/train/ and images/val/ with their "
                              f"labels in labels/train/ and labels/val/")
        return [folder], root
    where = data["yaml_file"]
    value = data.get(split)
    if not value:
        raise FrelonError(f"{where} has no {split} entry (the {split} images: a folder, relative to the dataset "
                          f"root); add it, e.g. {split}: images/{split}")
    given = Path(str(data["path"])) if data.get("path") else None
    bases = [base for base in [given if given is None or given.is_absolute() else root / given] if base] + [root]
    bases = [base for base in bases if base.is_dir()]
    entries = []
    for item in value if isinstance(value, list) else [value]:
        item = str(item)
        tries = [base / text for base in bases for text in [item] + ([item[3:]] if item.startswith("../") else [])]
        found = next((Path(os.path.normpath(p)) for p in tries if p.exists()), None)
        if found is None:
            raise FrelonError(f"{where}: {split} is {item!r}, which is not there (tried {_examples(tries)}); fix "
                              f"the path, relative to the dataset root")
        entries.append(found)
    return entries, bases[0]


def split_images(entries: list[Path], base: Path, where: str) -> list[Path]:
    """The image files of a split's folders (searched all the way down) and lists, in order."""
    images: list[Path] = []
    for entry in entries:
        if entry.is_dir():
            images += sorted(p for p in entry.rglob("*") if _is_image(p))
        else:
            images += _listed(entry, base)
    if not images:
        raise FrelonError(f"{where} has no images ({', '.join(sorted(IMAGE_SUFFIXES))}); put the images there")
    if any(p.is_absolute() for p in images):  # a list naming absolute paths: all of them so, for their common folder
        images = [p.absolute() for p in images]
    return list(dict.fromkeys(images))


def orphan_labels(entries: list[Path], images: list[Path]) -> list[Path]:
    """Label files in a split's label folders that no image of the split has."""
    expected = {label_path(p) for p in images}
    orphans = []
    for entry in entries:
        labels = label_path(entry / "x").parent if entry.is_dir() else None
        if labels is not None and labels.is_dir():
            orphans += [p for p in sorted(labels.rglob("*.txt")) if p not in expected and p.name != "classes.txt"]
    return orphans


def parse_labels(path: Path, n_classes: int) -> tuple[list[tuple[int, float, float, float, float]], int]:
    """The boxes `(class, cx, cy, w, h)` of a label file (none if it is missing or empty), and how many came
    from polygons."""
    if not path.exists():
        return [], 0
    boxes, polygons = [], 0
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        where = f"{path}:{number}"
        fields = line.split()
        if not fields:
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            values = []
        if not values or not all(math.isfinite(v) for v in values) or (len(values) != 5 and (
                len(values) < 7 or len(values) % 2 == 0)):
            raise FrelonError(f"{where}: {line.strip()!r} is not 'class cx cy w h' (5 numbers) nor a polygon "
                              f"'class x1 y1 x2 y2 x3 y3 ...'; fix the line or export the labels again")
        label = values[0]
        if label != int(label) or not 0 <= label < n_classes:
            raise FrelonError(f"{where}: class {fields[0]} is not one of the {n_classes} classes (0 to "
                              f"{n_classes - 1}); fix the label, or add the class to the names")
        coords = values[1:]
        outside = [v for v in coords if not -TOLERANCE <= v <= 1 + TOLERANCE]
        if outside:
            raise FrelonError(f"{where}: {outside[0]} is outside [0, 1]; YOLO labels are fractions of the image's "
                              f"width and height: divide pixel values by them, or export the labels again")
        coords = [min(1.0, max(0.0, v)) for v in coords]
        if len(coords) > 4:
            xs, ys = coords[0::2], coords[1::2]
            coords = [(min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)]
            polygons += 1
        boxes.append((int(label), *coords))
    return boxes, polygons


def pixel_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[list[float], bool]:
    """A normalised `(cx, cy, w, h)` as pixels `[x, y, w, h]` of a `width` x `height` image, clipped to it;
    and whether it reached outside."""
    cx, cy, w, h = box
    x0, y0, x1, y1 = (cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height
    clipped = x0 < -TOLERANCE * width or y0 < -TOLERANCE * height or x1 > (1 + TOLERANCE) * width \
        or y1 > (1 + TOLERANCE) * height
    x0, y0, x1, y1 = max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1)
    x0, y0, x1, y1 = (round(v, 6) for v in (x0, y0, x1, y1))
    return [x0, y0, round(max(0.0, x1 - x0), 6), round(max(0.0, y1 - y0), 6)], clipped


def yolo_split(images: list[Path], infos: list[dict], names: list[str]) -> tuple[dict, str, dict]:
    """The COCO dict of a split's images and their labels, its image folder (file names are relative to
    it), and what was mended or counted."""
    folder = Path(os.path.commonpath([str(p.parent) for p in images]))
    coco_images, annotations = [], []
    counts = {"missing_label_files": 0, "polygons_as_boxes": 0, "boxes_without_area": 0,
              "boxes_clipped_to_image": 0, "exif_rotated": 0}
    for image_id, (path, info) in enumerate(zip(images, infos), start=1):
        width, height, orientation = info["width"], info["height"], info["orientation"]
        coco_images.append({"id": image_id, "file_name": path.relative_to(folder).as_posix(), "width": width,
                            "height": height})
        labels = label_path(path)
        counts["missing_label_files"] += not labels.exists()
        counts["exif_rotated"] += orientation in _TURNED
        boxes, polygons = parse_labels(labels, len(names))
        counts["polygons_as_boxes"] += polygons
        for label, *box in boxes:
            bbox, clipped = pixel_box(to_stored(orientation, *box), width, height)
            if bbox[2] <= 0 or bbox[3] <= 0:
                counts["boxes_without_area"] += 1
                continue
            counts["boxes_clipped_to_image"] += clipped
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                                "bbox": bbox, "area": round(bbox[2] * bbox[3], 6), "iscrowd": 0})
    categories = [{"id": i + 1, "name": name, "supercategory": "object"} for i, name in enumerate(names)]
    return {"info": {"description": "converted from YOLO labels"}, "images": coco_images,
            "annotations": annotations, "categories": categories}, str(folder), counts


def prepare_yolo(root: str | os.PathLike, out_dir: str | os.PathLike, classes: list[str] | None = None) -> dict:
    """Check a YOLO dataset and write `out_dir` (train.json, val.json, splits.json, categories.json,
    report.json: images, objects, images without objects, missing label files, boxes without area or
    clipped to the image, polygons taken as boxes, EXIF-rotated and repeated images, per split)."""
    root = Path(root)
    if not root.is_dir():
        raise FrelonError(f"{root} is not a folder: give the folder of the YOLO dataset (the one holding data.yaml, "
                          f"or images/ and labels/)")
    data = read_data_yaml(root)
    names = class_names(data, classes, root)
    report = {"format": "yolo", "root": str(root), "classes": names, "splits": {}}
    hashes, folders = {}, {}
    with atomic_dir(out_dir) as work:
        for split in SPLITS:
            entries, base = split_entries(root, data, split)
            where = ", ".join(map(str, entries))
            images = split_images(entries, base, where)
            orphans = orphan_labels(entries, images)
            if orphans:
                raise FrelonError(f"{len(orphans)} label file(s) of {split} have no image, e.g. {_examples(orphans)}; "
                                  f"add the images (same name, an image suffix, under images/ where the label is "
                                  f"under labels/) or remove the label files")
            infos = read_images(images, where)
            hashes[split], repeated = _hashes(images, infos)
            coco, folders[split], counts = yolo_split(images, infos, names)
            write_json(work / f"{split}.json", coco)
            _, targets = training_targets(work / f"{split}.json")
            report["splits"][split] = {**summary(targets), **counts, "duplicate_images": repeated,
                                       "images_folder": folders[split]}
        check_duplicates(hashes)
        _write(work, names, report, folders)
    return report


# --- COCO JSON ----------------------------------------------------------------------------------------------------


def prepare_coco_files(out_dir: str | os.PathLike, splits: dict[str, tuple[str | os.PathLike, str | os.PathLike]]
                       ) -> dict:
    """Check COCO instances files of your own (`{"train": (annotations, images folder), "val": ...}`) and
    write `out_dir` as `frelon.data.coco.prepare` does: every image listed there and readable at the size
    the file gives, train and val with the same categories and no image in common."""
    report: dict = {"format": "coco", "splits": {}}
    hashes, categories = {}, {}
    with atomic_dir(out_dir) as work:
        for split in SPLITS:
            annotations, folder = (Path(p) for p in splits[split])
            if not annotations.is_file():
                raise FrelonError(f"{annotations} not found: give the {split} split's COCO annotation file")
            if not folder.is_dir():
                raise FrelonError(f"{folder} is not a folder: give the folder the file names of {annotations} are "
                                  f"relative to")
            index, images = training_targets(annotations)
            categories[split] = list(zip(index.ids, index.names))
            paths = [folder / im["file_name"] for im in images.values()]
            infos = read_images(paths, str(annotations))
            wrong = [f"{p} is {i['width']}x{i['height']}, not {im['width']}x{im['height']}"
                     for p, i, im in zip(paths, infos, images.values()) if (i["width"], i["height"]) != (im["width"],
                                                                                                     im["height"])]
            if wrong:
                raise FrelonError(f"{len(wrong)} image(s) differ in size from what {annotations} gives, e.g. "
                                  f"{_examples(wrong)}; the annotations belong to other images (or to the images "
                                  f"before a resize): give the images they were made on")
            hashes[split], repeated = _hashes(paths, infos)
            shutil.copyfile(annotations, work / f"{split}.json")
            report["splits"][split] = {**summary(images), "duplicate_images": repeated,
                                       "exif_rotated": sum(i["orientation"] in _TURNED for i in infos),
                                       "annotations": str(annotations), "images_folder": str(folder)}
        if categories["train"] != categories["val"]:
            raise FrelonError(f"{splits['train'][0]} and {splits['val'][0]} list different categories "
                              f"({categories['train']} and {categories['val']}); both splits need the same ids and "
                              f"names")
        check_duplicates(hashes)
        write_json(work / "splits.json", {split: {"annotations": f"{split}.json", "images": str(splits[split][1])}
                                          for split in SPLITS})
        write_json(work / "categories.json", [{"index": i, "id": cid, "name": name}
                                              for i, (cid, name) in enumerate(categories["train"])])
        write_json(work / "report.json", report)
    return report
