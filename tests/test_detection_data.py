"""Detection data in the real layouts: VOC tars -> COCO JSON (box by box), COCO zips, COCO mAP."""

import json
import random
import xml.etree.ElementTree as ET

import pytest

from detection_fixtures import coco_folder, voc_devkit
from frelon.data import coco, voc
from frelon.data.demo_detection import COCO_CATEGORIES
from frelon.evaluate.detection import STATS, coco_eval, coco_summary, coco_tables


@pytest.fixture(scope="module")
def devkit(tmp_path_factory):
    return voc_devkit(tmp_path_factory.mktemp("voc"))


def test_voc_to_coco_matches_every_xml_box_by_box(devkit):
    data = voc.to_coco(devkit, voc.parse_sets("2007:trainval,2012:trainval"))
    assert [c["name"] for c in data["categories"]] == list(voc.VOC_CLASSES)
    assert [c["id"] for c in data["categories"]] == list(range(1, 21))
    by_image = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    assert len(data["images"]) == 20 and {im["file_name"].split("/")[0] for im in data["images"]} == {"VOC2007", "VOC2012"}
    checked = 0
    for image in data["images"]:
        stem = image["file_name"].rsplit("/", 1)[1][:-4]
        root = ET.parse(devkit / image["file_name"].split("/")[0] / "Annotations" / f"{stem}.xml").getroot()
        assert (image["width"], image["height"]) == (int(root.find("size/width").text), int(root.find("size/height").text))
        objects = root.findall("object")
        anns = by_image.get(image["id"], [])
        assert len(anns) == len(objects)
        for obj, ann in zip(objects, anns):
            xmin, ymin, xmax, ymax = (float(obj.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax"))
            assert ann["bbox"] == [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]
            assert ann["area"] == (xmax - xmin + 1) * (ymax - ymin + 1)
            assert ann["category_id"] == voc.VOC_CLASSES.index(obj.find("name").text) + 1
            assert ann["iscrowd"] == int(obj.find("difficult").text)
            checked += 1
    assert checked >= 20 and any(a["iscrowd"] for a in data["annotations"])


def test_voc_test_set_and_a_missing_set_is_named(devkit):
    test = voc.to_coco(devkit, voc.parse_sets("2007:test"))
    assert len(test["images"]) == 10 and all(im["file_name"].startswith("VOC2007/") for im in test["images"])
    with pytest.raises(Exception, match=r"VOC2012/ImageSets/Main/test.txt not found"):
        voc.to_coco(devkit, voc.parse_sets("2012:test"))
    with pytest.raises(Exception, match="is not YEAR:SET"):
        voc.parse_sets("2007")


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return coco_folder(tmp_path_factory.mktemp("coco"))


def test_coco_layout_index_and_training_targets_without_crowds(coco_root):
    files = coco.check_layout(coco_root)
    index, images = coco.training_targets(files["train2017"])
    assert index.ids == sorted(c["id"] for c in COCO_CATEGORIES) and len(index) == 5
    assert [index.category_id(index.index(c)) for c in index.ids] == index.ids
    raw = json.loads(files["train2017"].read_text())
    crowds = sum(a["iscrowd"] for a in raw["annotations"])
    assert sum(im["crowd"] for im in images.values()) == crowds > 0
    assert sum(len(im["boxes"]) for im in images.values()) == len(raw["annotations"]) - crowds
    assert all(0 <= label < 5 for im in images.values() for label in im["labels"])
    with pytest.raises(Exception, match="lacks .*val2017"):
        coco.check_layout(coco_root / "train2017")


def test_coco_eval_gives_1_for_the_ground_truth_and_less_for_shifted_boxes(coco_root, tmp_path):
    gt = coco_root / "annotations" / "instances_val2017.json"
    truth = json.loads(gt.read_text())
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in truth["annotations"] if not a["iscrowd"]]
    scores = coco_eval(gt, perfect, quiet=True)
    assert list(scores) == list(STATS) and scores["AP"] == pytest.approx(1.0) and scores["AP50"] == pytest.approx(1.0)
    shifted = [{**d, "bbox": [d["bbox"][0] + d["bbox"][2] * 0.3, *d["bbox"][1:]]} for d in perfect]
    assert coco_eval(gt, shifted, quiet=True)["AP75"] < 0.5
    with pytest.raises(Exception, match="category ids .* not in"):
        coco_eval(gt, [{**perfect[0], "category_id": 2}], quiet=True)


def test_coco_scored_by_category_in_parts_joins_into_the_whole_evaluation(coco_root):
    """N ranks each evaluate every N-th category; the summary of the joined tables is the single evaluation's."""
    gt = coco_root / "annotations" / "instances_val2017.json"
    truth = json.loads(gt.read_text())
    rng = random.Random(0)
    noisy = [{"image_id": a["image_id"], "category_id": rng.choice([a["category_id"], *[c["id"] for c in COCO_CATEGORIES]]),
              "bbox": [v + rng.uniform(-4, 4) for v in a["bbox"]], "score": rng.random()}
             for a in truth["annotations"] for _ in range(3)]
    whole = coco_eval(gt, noisy, quiet=True)
    assert 0 < whole["AP"] < 1
    for parts in (2, 3, 7):  # 7: more parts than the 5 categories, some empty
        assert coco_summary(gt, [coco_tables(gt, noisy, part, parts) for part in range(parts)]) == whole
    assert coco_summary(gt, [coco_tables(gt, [], 0, 2), coco_tables(gt, [], 1, 2)]) == dict.fromkeys(STATS, 0.0)


def test_the_cli_converts_voc_and_scores_detections(devkit, coco_root, tmp_path, capsys):
    from frelon.cli import main

    assert main(["voc-to-coco", str(devkit), "--sets", "2007:test", "--out", str(tmp_path / "voc07test.json")]) == 0
    assert len(json.loads((tmp_path / "voc07test.json").read_text())["images"]) == 10
    gt = coco_root / "annotations" / "instances_val2017.json"
    truth = json.loads(gt.read_text())
    (tmp_path / "dt.json").write_text(json.dumps([
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in truth["annotations"] if not a["iscrowd"]]))
    capsys.readouterr()
    assert main(["coco-eval", "--gt", str(gt), "--dt", str(tmp_path / "dt.json"), "--out", str(tmp_path / "s.json")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 12 and printed[0].startswith(" Average Precision  (AP) @[ IoU=0.50:0.95")
    assert json.loads((tmp_path / "s.json").read_text())["AP"] == pytest.approx(1.0)
    assert main(["coco-eval", "--gt", str(gt), "--dt", str(tmp_path / "voc07test.json")]) == 2  # not results


def test_prepare_voc_and_coco_write_the_splits_and_a_report(devkit, coco_root, tmp_path):
    report = voc.prepare(devkit, tmp_path / "voc", "2007:trainval,2012:trainval", "2007:test")
    assert report["splits"]["train"]["images"] == 20 and report["splits"]["val"]["images"] == 10
    assert (tmp_path / "voc" / "train.json").exists() and (tmp_path / "voc" / "val.json").exists()
    report = coco.prepare(coco_root, tmp_path / "coco")
    assert report["splits"]["train2017"]["images"] == 16 and report["splits"]["val2017"]["crowd_or_difficult"] >= 0
    categories = json.loads((tmp_path / "coco" / "categories.json").read_text())
    assert [c["index"] for c in categories] == list(range(5)) and [c["id"] for c in categories] == [1, 3, 18, 44, 90]
    (coco_root / "val2017" / "000000000017.jpg").rename(tmp_path / "moved.jpg")
    try:
        with pytest.raises(Exception, match=r"1 image\(s\) listed in .* are not in"):
            coco.prepare(coco_root, tmp_path / "coco2")
        assert not (tmp_path / "coco2").exists()
    finally:
        (tmp_path / "moved.jpg").rename(coco_root / "val2017" / "000000000017.jpg")
