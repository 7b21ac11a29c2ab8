"""Your own detection data: YOLO folders and COCO JSON files checked and prepared as VOC and COCO are,
the demo's YOLO hornet set, the config entries, and the CLI."""

import copy
import json
import random

import pytest
import yaml
from PIL import Image

from conftest import REPO, copy_workflow, run
from frelon.cli import main
from frelon.config import validate
from frelon.data import demo_hornet_detection
from frelon.data.own_detection import prepare_coco_files, prepare_yolo
from frelon.errors import FrelonError

SCHEMA = REPO / "config" / "schema.yaml"
W, H = 32, 24
COLOURS = iter(random.Random(0).sample(range(256 ** 3), 10_000))  # every image its own bytes


def image(path, size=(W, H), orientation=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = next(COLOURS)
    img = Image.new("RGB", size, (colour >> 16, colour >> 8 & 255, colour & 255))
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    img.save(path, exif=exif)
    return path


def yolo_set(root, labels, names=("wasp", "bee"), data=True):
    """`labels`: {"train/a": label text, or None for no label file}; images are 32x24 PNGs."""
    for key, text in labels.items():
        split, stem = key.split("/")
        image(root / "images" / split / f"{stem}.png")
        if text is not None:
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"{stem}.txt").write_text(text)
    if data:
        listed = dict(enumerate(names)) if data == "dict" else list(names)
        (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images/train", "val": "images/val",
                                                       "names": listed}))
    return root


def coco_json(path):
    return json.loads(path.read_text())


def boxes(prepared, split):
    coco = coco_json(prepared / f"{split}.json")
    names = {im["id"]: im["file_name"] for im in coco["images"]}
    return {(names[a["image_id"]], a["category_id"]): a["bbox"] for a in coco["annotations"]}


def test_yolo_labels_become_pixel_boxes_of_the_image_with_ids_from_one(tmp_path):
    root = yolo_set(tmp_path / "yolo", {
        "train/a": "0 0.5 0.5 0.25 0.5\n1 0.25 0.75 0.5 0.5\n",
        "train/b": "1 0.1 0.1 0.5 0.1 0.3 0.6\n",  # a polygon: its bounding box
        "train/c": "0 0.95 0.5 0.2 0.2\n1 0.5 0.5 0 0.1\n",  # reaches outside: clipped; no width: dropped
        "train/d": "",
        "train/e": None,
        "val/f": "0 0.5 0.5 1.0000005 0.5\n",  # round-off past 1: clamped
    })
    report = prepare_yolo(root, tmp_path / "out")
    out = tmp_path / "out"
    assert boxes(out, "train") == {
        ("a.png", 1): pytest.approx([12, 6, 8, 12]), ("a.png", 2): pytest.approx([0, 12, 16, 12]),
        ("b.png", 2): pytest.approx([3.2, 2.4, 12.8, 12]), ("c.png", 1): pytest.approx([27.2, 9.6, 4.8, 4.8])}
    assert boxes(out, "val") == {("f.png", 1): pytest.approx([0, 6, 32, 12])}
    train = coco_json(out / "train.json")
    assert train["categories"] == [{"id": 1, "name": "wasp", "supercategory": "object"},
                                   {"id": 2, "name": "bee", "supercategory": "object"}]
    assert all(a["iscrowd"] == 0 and a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3])
               for a in train["annotations"])
    assert {im["file_name"]: (im["width"], im["height"]) for im in train["images"]}["a.png"] == (W, H)
    assert coco_json(out / "splits.json") == {split: {"annotations": f"{split}.json",
                                                      "images": str(root / "images" / split)}
                                              for split in ("train", "val")}
    assert coco_json(out / "categories.json") == [{"index": 0, "id": 1, "name": "wasp"},
                                                  {"index": 1, "id": 2, "name": "bee"}]
    counts = coco_json(out / "report.json")["splits"]["train"]
    assert counts == report["splits"]["train"]
    assert {k: counts[k] for k in ("images", "objects", "images_without_objects", "missing_label_files",
                                   "boxes_without_area", "boxes_clipped_to_image", "polygons_as_boxes",
                                   "duplicate_images", "exif_rotated")} == {
        "images": 5, "objects": 4, "images_without_objects": 2, "missing_label_files": 1, "boxes_without_area": 1,
        "boxes_clipped_to_image": 1, "polygons_as_boxes": 1, "duplicate_images": 0, "exif_rotated": 0}


def test_names_as_a_dict_and_a_roboflow_layout_with_paths_above_the_root(tmp_path):
    root = tmp_path / "rf"
    for split, folder in (("train", "train"), ("valid", "valid")):
        image(root / folder / "images" / f"{split}.png")
        (root / folder / "labels").mkdir(parents=True)
        (root / folder / "labels" / f"{split}.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 2\nnames: {0: wasp, 1: bee}\n")
    report = prepare_yolo(root, tmp_path / "out")
    assert report["classes"] == ["wasp", "bee"]
    assert boxes(tmp_path / "out", "val") == {("valid.png", 2): pytest.approx([8, 6, 16, 12])}


def test_folders_without_data_yaml_take_the_class_names_from_the_config(tmp_path):
    root = yolo_set(tmp_path / "yolo", {"train/a": "1 0.5 0.5 0.5 0.5\n", "val/b": ""}, data=False)
    with pytest.raises(FrelonError, match="no data.yaml naming the classes"):
        prepare_yolo(root, tmp_path / "out")
    assert prepare_yolo(root, tmp_path / "out", ["wasp", "bee"])["classes"] == ["wasp", "bee"]
    assert coco_json(tmp_path / "out" / "categories.json")[1]["name"] == "bee"


def test_class_names_in_the_config_must_agree_with_data_yaml(tmp_path):
    root = yolo_set(tmp_path / "yolo", {"train/a": "", "val/b": ""}, data="dict")
    assert prepare_yolo(root, tmp_path / "out", ["wasp", "bee"])["classes"] == ["wasp", "bee"]
    with pytest.raises(FrelonError, match=r"differ from the names in .*data.yaml"):
        prepare_yolo(root, tmp_path / "out", ["bee", "wasp"])


def test_an_exif_turned_image_has_its_upright_box_mapped_to_the_pixels_as_stored(tmp_path):
    root = yolo_set(tmp_path / "yolo", {"val/b": ""})
    image(root / "images" / "train" / "a.jpg", orientation=6)  # upright 24 wide, 32 high
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text("0 0.25 0.5 0.5 0.25\n")  # upright x 0-12, y 12-20
    report = prepare_yolo(root, tmp_path / "out")
    assert boxes(tmp_path / "out", "train") == {("a.jpg", 1): pytest.approx([12, 12, 8, 12])}
    assert report["splits"]["train"]["exif_rotated"] == 1


@pytest.mark.parametrize("line, match", [
    ("0 0.5 0.5 0.1", r"a.txt:2: '0 0.5 0.5 0.1' is not 'class cx cy w h'"),
    ("0 0.5 x 0.1 0.1", r"a.txt:2: .* is not 'class cx cy w h'"),
    ("0 0.5 0.5 0.1 0.1 0.2", r"a.txt:2: .* is not 'class cx cy w h' \(5 numbers\) nor a polygon"),
    ("0 1.2 0.5 0.1 0.1", r"a.txt:2: 1.2 is outside \[0, 1\]"),
    ("2 0.5 0.5 0.1 0.1", r"a.txt:2: class 2 is not one of the 2 classes"),
    ("0.5 0.5 0.5 0.1 0.1", r"a.txt:2: class 0.5 is not one of the 2 classes"),
])
def test_a_bad_label_line_is_named_with_its_file_and_line(tmp_path, line, match):
    root = yolo_set(tmp_path / "yolo", {"train/a": f"0 0.5 0.5 0.1 0.1\n{line}\n", "val/b": ""})
    with pytest.raises(FrelonError, match=match):
        prepare_yolo(root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unreadable_missing_and_repeated_images_and_labels_without_images_are_refused(tmp_path):
    root = yolo_set(tmp_path / "yolo", {"train/a": "", "train/b": "", "val/c": ""})
    (root / "labels" / "train" / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(FrelonError, match=r"1 label file\(s\) of train have no image, e.g. .*ghost.txt"):
        prepare_yolo(root, tmp_path / "out")
    (root / "labels" / "train" / "ghost.txt").unlink()
    (root / "images" / "train" / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(FrelonError, match=r"1 image\(s\) of .*train cannot be read, e.g. .*bad.jpg"):
        prepare_yolo(root, tmp_path / "out")
    (root / "images" / "train" / "bad.jpg").unlink()
    (root / "images" / "val" / "copy.png").write_bytes((root / "images" / "train" / "b.png").read_bytes())
    with pytest.raises(FrelonError, match=r"duplicates across splits: 1 image\(s\) .*copy.png = .*b.png"):
        prepare_yolo(root, tmp_path / "out")
    (root / "images" / "val" / "copy.png").rename(root / "images" / "train" / "copy.png")
    assert prepare_yolo(root, tmp_path / "out")["splits"]["train"]["duplicate_images"] == 1
    (root / "train.txt").write_text("./images/train/a.png\nimages/train/gone.png\n")  # a list of images
    (root / "data.yaml").write_text("train: train.txt\nval: images/val\nnames: [wasp, bee]\n")
    with pytest.raises(FrelonError, match=r"1 image\(s\) listed in .*train.txt are missing, e.g. .*gone.png"):
        prepare_yolo(root, tmp_path / "out")


def coco_split(folder, name, categories, sizes, file_name=None):
    """A COCO file `folder/name.json` of images `folder/<name>/<i>.png` (sizes) with a box on each."""
    images = [{"id": i + 1, "file_name": f"{i}.png", "width": w, "height": h} for i, (w, h) in enumerate(sizes)]
    for im in images:
        image(folder / name / im["file_name"])
    annotations = [{"id": i + 1, "image_id": i + 1, "category_id": categories[-1]["id"], "bbox": [1, 2, 10, 5],
                    "area": 50, "iscrowd": 0} for i in range(len(images))]
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path, folder / name


CATEGORIES = [{"id": 3, "name": "wasp"}, {"id": 7, "name": "bee"}]


def test_coco_files_of_your_own_are_checked_and_copied(tmp_path):
    splits = {"train": coco_split(tmp_path, "mine_train", CATEGORIES, [(W, H), (W, H)]),
              "val": coco_split(tmp_path, "mine_val", CATEGORIES, [(W, H)])}
    report = prepare_coco_files(tmp_path / "out", splits)
    out = tmp_path / "out"
    assert (out / "train.json").read_bytes() == splits["train"][0].read_bytes()
    assert coco_json(out / "splits.json")["val"] == {"annotations": "val.json", "images": str(tmp_path / "mine_val")}
    assert coco_json(out / "categories.json") == [{"index": 0, "id": 3, "name": "wasp"},
                                                  {"index": 1, "id": 7, "name": "bee"}]
    assert report["splits"]["train"]["objects"] == 2 and coco_json(out / "report.json") == report


def test_coco_files_with_wrong_sizes_missing_images_other_categories_or_shared_images_are_refused(tmp_path):
    train = coco_split(tmp_path, "train", CATEGORIES, [(W, H)])
    val = coco_split(tmp_path, "val", CATEGORIES, [(30, H)])
    with pytest.raises(FrelonError, match=r"differ in size from what .*val.json gives, e.g. .*0.png is 32x24, not 30x"):
        prepare_coco_files(tmp_path / "out", {"train": train, "val": val})
    val = coco_split(tmp_path, "val", CATEGORIES, [(W, H), (W, H)])
    (val[1] / "1.png").unlink()
    with pytest.raises(FrelonError, match=r"1 image\(s\) listed in .*val.json are missing"):
        prepare_coco_files(tmp_path / "out", {"train": train, "val": val})
    other = coco_split(tmp_path, "other", CATEGORIES[:1], [(W, H)])
    with pytest.raises(FrelonError, match="list different categories"):
        prepare_coco_files(tmp_path / "out", {"train": train, "val": other})
    val = coco_split(tmp_path, "val", CATEGORIES, [(W, H)])
    (val[1] / "0.png").write_bytes((train[1] / "0.png").read_bytes())
    with pytest.raises(FrelonError, match="duplicates across splits"):
        prepare_coco_files(tmp_path / "out", {"train": train, "val": val})
    broken = coco_json(train[0])
    broken["annotations"][0]["image_id"] = 9
    train[0].write_text(json.dumps(broken))
    with pytest.raises(FrelonError, match="refers to image 9"):
        prepare_coco_files(tmp_path / "out", {"train": train, "val": val})
    assert not (tmp_path / "out").exists()


def test_the_demo_hornet_set_is_a_yolo_set_that_prepares_cleanly_the_same_for_a_seed(tmp_path):
    counts = demo_hornet_detection.generate(tmp_path / "a", 8, 64, seed=3)
    assert counts == {"train": 8, "val": 2}
    assert yaml.safe_load((tmp_path / "a" / "data.yaml").read_text())["names"] == ["velutina", "crabro"]
    report = prepare_yolo(tmp_path / "a", tmp_path / "out")
    assert report["splits"]["train"]["images"] == 8 and report["splits"]["train"]["objects"] > 0
    assert all(report["splits"][s][k] == 0 for s in ("train", "val")
               for k in ("missing_label_files", "boxes_without_area", "boxes_clipped_to_image", "duplicate_images"))
    sides = [max(a["bbox"][2:]) for a in coco_json(tmp_path / "out" / "train.json")["annotations"]]
    assert min(sides) >= 64 / 6
    demo_hornet_detection.generate(tmp_path / "b", 8, 64, seed=3)
    for path in (tmp_path / "a").rglob("*.*"):
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes(), path


def test_the_cli_prepares_both_formats_and_names_a_problem(tmp_path, capsys):
    assert main(["demo-data", "hornet-detection", str(tmp_path / "demo"), "--images", "2", "--size", "48"]) == 0
    assert main(["prepare-detection", "yolo", str(tmp_path / "demo"), str(tmp_path / "out")]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["classes"] == ["velutina", "crabro"]
    assert main(["prepare-detection", "yolo", str(tmp_path / "demo"), str(tmp_path / "x"), "--classes", "a,b"]) == 2
    assert "differ from the names" in capsys.readouterr().err
    args = [f"--{split}-{option}={path}" for split in ("train", "val")
            for option, path in (("annotations", tmp_path / "out" / f"{split}.json"),
                                 ("images", tmp_path / "demo" / "images" / split))]
    assert main(["prepare-detection", "coco", str(tmp_path / "coco"), *args]) == 0
    assert (tmp_path / "coco" / "val.json").read_bytes() == (tmp_path / "out" / "val.json").read_bytes()


@pytest.fixture
def demo():
    return yaml.safe_load((REPO / "config" / "demo.yaml").read_text())


OWN = {"bees": {"format": "yolo", "root": "mine/bees", "classes": ["wasp", "bee"]},
       "traps": {"format": "coco", "train": {"annotations": "t.json", "images": "t"},
                 "val": {"annotations": "v.json", "images": "v"}}}


def test_own_entries_are_validated_and_a_study_on_them_resolves_to_their_prepared_folder(demo):
    from frelon.spec import all_runs, resolve

    config = copy.deepcopy(demo)
    config["detection_data"].update(OWN)
    config["studies"]["mine"] = {"dataset": "bees", "model": {"decoder": "unet"}, "detection": {"input_size": 64},
                                 "experiments": {"yolo": {}, "coco": {"dataset": "traps"}}}
    validate(config, SCHEMA)
    specs = [resolve(config, run) for run in all_runs(config, "mine")]
    assert [(s["task"], s["data"]["dir"], s["data"]["kind"]) for s in specs] == [
        ("detection", "data/prepared/bees", "bees"), ("detection", "data/prepared/traps", "traps")]
    for entry, match in [({"format": "yolo"}, "detection_data.bad: missing required key 'root'"),
                         ({"format": "yolo", "root": "x", "train": "y"}, "unknown key 'train'; allowed keys are cl"),
                         ({"format": "coco", "train": {"annotations": "a"}, "val": {"annotations": "a", "images": "b"}},
                          "detection_data.bad.train: missing required key 'images'"),
                         ({"format": "darknet", "root": "x"}, "detection_data.bad.format: 'darknet' is not one of"),
                         ({"root": "x"}, "missing required key 'format'"),
                         ({"format": "yolo", "root": "x", "classes": ["a,b"]}, "classes.0")]:
        bad = copy.deepcopy(demo)
        bad["detection_data"]["bad"] = entry
        with pytest.raises(FrelonError, match=match):
            validate(bad, SCHEMA)


@pytest.mark.slow
def test_snakemake_prepares_an_own_yolo_set_for_a_study_on_it(tmp_path, demo):
    work = copy_workflow(tmp_path / "w")
    demo_hornet_detection.generate(work / "mine" / "hornets", 4, 48, seed=0)
    config = copy.deepcopy(demo)
    config["detection_data"]["hornets"] = {"format": "yolo", "root": "mine/hornets"}
    config["studies"]["detection"]["experiments"]["hornets"] = {"dataset": "hornets"}
    (work / "config" / "mine.yaml").write_text(yaml.safe_dump(config))
    dry = run(["snakemake", "-n", "data", "--cores", "1", "--configfile", "config/mine.yaml"], cwd=work).stdout
    assert "rule prepare_detection:\n    input: mine/hornets\n    output: data/prepared/hornets" in dry
    run(["snakemake", "data/prepared/hornets", "--cores", "1", "--configfile", "config/mine.yaml"], cwd=work)
    assert json.loads((work / "data" / "prepared" / "hornets" / "report.json").read_text())["classes"] == [
        "velutina", "crabro"]
