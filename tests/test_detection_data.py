"""Detection data in the real layouts: VOC tars -> COCO JSON (box by box), COCO zips, COCO mAP; and a split as
CenterNet trains on it (augmented batches, finished on the device) and is scored on it."""

import json
import random
import xml.etree.ElementTree as ET

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as F

from detection_fixtures import coco_folder, prepared_pictures, voc_devkit
from frelon.data import coco, voc
from frelon.data.demo_detection import COCO_CATEGORIES
from frelon.errors import FrelonError
from frelon.data.transforms import apply, detection_transform, draw_augmentation, training_matrix, warp_image
from frelon.evaluate.detection import STATS, coco_eval, coco_summary, coco_tables
from frelon.spec import DETECTION_DEFAULTS
from frelon.tasks.detection.data import DetectionBatch, DetectionSet, collate
from frelon.tasks.detection.targets import build_targets
from frelon.train.engine import move

PREPROCESSING = {"input_size": 64, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
SETTINGS = {**DETECTION_DEFAULTS, "max_objects": 8}


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
    with pytest.raises(FrelonError, match=r"VOC2012/ImageSets/Main/test.txt not found"):
        voc.to_coco(devkit, voc.parse_sets("2012:test"))
    with pytest.raises(FrelonError, match="is not YEAR:SET"):
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
    with pytest.raises(FrelonError, match="lacks .*val2017"):
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
    with pytest.raises(FrelonError, match="category ids .* not in"):
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
        with pytest.raises(FrelonError, match=r"1 image\(s\) listed in .* are not in"):
            coco.prepare(coco_root, tmp_path / "coco2")
        assert not (tmp_path / "coco2").exists()
    finally:
        (tmp_path / "moved.jpg").rename(coco_root / "val2017" / "000000000017.jpg")


def squares(count: int, seed: int = 0) -> list[tuple[Image.Image, list[list[float]], list[int]]]:
    """Pictures of assorted sizes, each with one to three bright squares on dark noise, and their boxes."""
    rng = random.Random(seed)
    pictures = []
    for _ in range(count):
        width, height = rng.randint(50, 140), rng.randint(40, 110)
        noise = torch.Generator().manual_seed(seed)
        pixels = torch.randint(0, 40, (3, height, width), dtype=torch.uint8, generator=noise)
        boxes = []
        for _ in range(rng.randint(1, 3)):
            side = rng.randint(8, 30)
            x, y = rng.randint(0, width - side), rng.randint(0, height - side)
            pixels[:, y:y + side, x:x + side] = torch.tensor([rng.randint(180, 255) for _ in range(3)]).view(3, 1, 1)
            boxes.append([float(x), float(y), float(side), float(side)])
        pictures.append((F.to_pil_image(pixels), boxes, [rng.randint(1, 3) for _ in boxes]))
    return pictures


@pytest.fixture(scope="module")
def squares_set(tmp_path_factory):
    return prepared_pictures(tmp_path_factory.mktemp("squares"), squares(12))


def training_set(root, raw=True, seed=0, epoch=3, **augment) -> DetectionSet:
    dataset = DetectionSet(root, "train", PREPROCESSING, {**SETTINGS, "augment": augment}, train=True, seed=seed,
                           raw=raw)
    dataset.set_epoch(epoch)
    return dataset


def test_a_training_batch_carries_warped_uint8_images_and_finish_makes_the_input_and_each_images_targets(squares_set):
    dataset = training_set(squares_set, crop="shift", translate=0.4, epoch=6)
    batch = collate(dataset.__getitems__(list(range(12))))
    assert isinstance(batch, DetectionBatch) and batch.images.shape == (12, 3, 64, 64)
    assert batch.images.dtype == torch.uint8 and set(batch.colour) == {"brightness", "contrast", "saturation"}
    assert batch.boxes.shape[:2] == batch.labels.shape == batch.valid.shape and batch.boxes.shape[1] <= 3
    for b in range(12):  # the boxes frame the bright squares
        for x0, y0, x1, y1 in batch.boxes[b, batch.valid[b]].round().int().tolist():
            if x1 - x0 > 4 and y1 - y0 > 4:
                assert batch.images[b, :, y0 + 2:y1 - 2, x0 + 2:x1 - 2].float().mean() > 150
    batch = move(batch, torch.device("cpu"), channels_last=True)  # as the engine has it, then finishes it
    images, targets = batch.finish()
    assert images.shape == (12, 3, 64, 64) and images.dtype == torch.float32
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert batch.dropped.sum() > 0 and torch.equal(targets["dropped"], batch.dropped)
    for b in range(12):
        one = build_targets(batch.boxes[b, batch.valid[b]], batch.labels[b, batch.valid[b]], dataset.num_classes,
                            (64, 64), max_objects=8, min_overlap=SETTINGS["min_overlap"])
        for key, value in one.items():
            assert torch.allclose(targets[key][b].double(), value.double(), atol=1e-6, rtol=0), key
    unjittered = training_set(squares_set, crop="shift", translate=0.4, epoch=6, brightness=0, contrast=0, saturation=0)
    plain = unjittered.__getitems__([0, 1])
    assert plain.colour == {} and torch.equal(plain.images, batch.images[:2])  # colour settings: the batch's work
    mean, std = torch.tensor(PREPROCESSING["mean"]).view(3, 1, 1), torch.tensor(PREPROCESSING["std"]).view(3, 1, 1)
    assert torch.allclose(plain.finish()[0], (plain.images / 255 - mean) / std, atol=1e-6)


def test_a_sample_is_the_same_in_any_batch_on_any_worker_and_in_a_resumed_run(squares_set):
    dataset = training_set(squares_set)
    whole = dataset.__getitems__(list(range(12)))
    loader = DataLoader(training_set(squares_set), batch_size=4, sampler=[7, 2, 11, 0, 5, 9, 1, 3],
                        num_workers=2, collate_fn=collate)
    order = [7, 2, 11, 0, 5, 9, 1, 3]
    for k, batch in enumerate(loader):
        for slot, i in enumerate(order[4 * k:4 * k + 4]):
            assert torch.equal(batch.images[slot], whole.images[i])
            n = int(batch.valid[slot].sum())
            assert n == int(whole.valid[i].sum())
            assert torch.equal(batch.boxes[slot, :n], whole.boxes[i, :n])
            assert torch.equal(batch.labels[slot, :n], whole.labels[i, :n])
            assert all(torch.equal(batch.colour[name][slot], whole.colour[name][i]) for name in whole.colour)
    resumed = training_set(squares_set).__getitems__([4])  # a new process's set, at the same epoch
    assert torch.equal(resumed.images[0], whole.images[4])
    assert torch.equal(resumed.boxes[0], whole.boxes[4, :len(resumed.boxes[0])])
    assert not torch.equal(training_set(squares_set, epoch=4).__getitems__([4]).images[0], whole.images[4])
    assert not torch.equal(training_set(squares_set, seed=1).__getitems__([4]).images[0], whole.images[4])


def test_without_raw_the_loader_finishes_the_batch_itself_alike(squares_set):
    raw = training_set(squares_set).__getitems__([3, 8, 1])
    images, targets = collate(training_set(squares_set, raw=False).__getitems__([3, 8, 1]))
    finished = raw.finish()
    assert torch.equal(images, finished[0])
    assert targets.keys() == finished[1].keys() and all(torch.equal(targets[k], finished[1][k]) for k in targets)


def test_evaluation_samples_are_the_letterboxed_normalised_image_and_its_index(squares_set):
    dataset = DetectionSet(squares_set, "val", PREPROCESSING, SETTINGS)
    mean, std = torch.tensor(PREPROCESSING["mean"]).view(3, 1, 1), torch.tensor(PREPROCESSING["std"]).view(3, 1, 1)
    image, index = dataset[5]
    letterboxed, _ = apply(detection_transform(dataset.letterbox(5)), dataset.read_pil(5), [], [], 0, 0, 5)
    assert index == 5 and torch.equal(image, (letterboxed - mean) / std)
    images, indices = next(iter(DataLoader(dataset, batch_size=3, collate_fn=collate)))
    assert images.shape == (3, 3, 64, 64) and indices == [0, 1, 2] and torch.equal(images[0], dataset[0][0])


def test_a_large_jpeg_is_decoded_at_a_reduction_and_warped_as_the_full_picture(tmp_path):
    pixels = torch.zeros(3, 1200, 1600, dtype=torch.uint8)
    pixels[:, 300:700, 400:1000] = 220
    root = prepared_pictures(tmp_path, [(F.to_pil_image(pixels), [[400.0, 300.0, 600.0, 400.0]], [2])])
    dataset = training_set(root)
    augmentation = draw_augmentation(dataset.augment, dataset.seed, dataset.epoch, 0, dataset.letterbox(0))
    matrix = training_matrix(dataset.letterbox(0), augmentation)
    reduced, reduction = dataset._decode(0, scale=float(matrix[:, :2].abs().max()))
    assert reduction == 8 and reduced.size == (200, 150)
    full = warp_image(dataset.read_pil(0), matrix, 64).float()
    batch = dataset.__getitems__([0])
    assert (batch.images[0].float() - full).abs().mean() < 2
    x0, y0, x1, y1 = batch.boxes[0, 0].round().int().tolist()
    assert batch.images[0, :, y0 + 1:y1 - 1, x0 + 1:x1 - 1].float().mean() > 200


def test_crowd_regions_and_difficult_objects_train_as_objects_by_default_or_are_dropped_and_never_scored(tmp_path):
    picture = Image.new("RGB", (64, 48), (90, 90, 90))
    root = prepared_pictures(tmp_path, [(picture, [[4.0, 4.0, 20.0, 20.0], [30.0, 10.0, 20.0, 30.0]], [1, 2])])
    annotations = json.loads((root / "annotations.json").read_text())
    annotations["annotations"][1]["iscrowd"] = 1  # VOC's difficult objects are stored so
    (root / "annotations.json").write_text(json.dumps(annotations))
    official = DetectionSet(root, "train", PREPROCESSING, SETTINGS, train=True)  # the official code reads them all
    assert official.images[0]["labels"] == [0, 1] and official.images[0]["crowd"] == 1
    dropped = DetectionSet(root, "train", PREPROCESSING, {**SETTINGS, "crowd": "drop"}, train=True)
    assert dropped.images[0]["labels"] == [0] and dropped.images[0]["crowd"] == 1
    scored = DetectionSet(root, "val", PREPROCESSING, SETTINGS)  # what a picture shows as true boxes
    assert scored.images[0]["labels"] == [0]
