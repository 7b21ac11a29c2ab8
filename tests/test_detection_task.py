"""CenterNet through the one engine: training, evaluation across ranks, outputs, `frelon detect`, bad input."""

import json
import os

import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from detection_fixtures import coco_folder, detection_spec, prepared_voc
from frelon.data import coco
from frelon.errors import FrelonError
from frelon.evaluate.detection import STATS
from frelon.tasks.detection.task import DetectionTask
from frelon.parallel import distributed
from frelon.train import engine
from frelon.launch import worker
from frelon.parallel.distributed import World
from test_distributed_eval import AGENT_STORE, rendezvous

CPU = World(0, 1, 0, torch.device("cpu"))
TRAIN = dict(epochs=2, batch_size=8, log_every=1)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepared_voc(tmp_path_factory.mktemp("voc"))


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    spec = detection_spec(prepared, out, **TRAIN)
    engine.fit(DetectionTask(spec), spec, CPU)
    return out


def test_a_detection_run_logs_each_loss_term_beside_the_total_and_saves_its_classes(trained):
    history = pd.read_csv(trained / "history.csv")
    assert list(history.epoch) == [1, 2]
    for term in ("train_loss", "train_heatmap_loss", "train_size_loss", "train_offset_loss"):
        assert (history[term] > 0).all(), term
    total = history.train_heatmap_loss + 0.1 * history.train_size_loss + history.train_offset_loss
    assert history.train_loss.tolist() == pytest.approx(total.tolist(), rel=1e-4)
    state = torch.load(trained / "model.pt", weights_only=True)
    assert [c["name"] for c in state["classes"]][:2] == ["aeroplane", "bicycle"] and len(state["classes"]) == 20
    assert state["preprocessing"]["input_size"] == 64


def test_evaluation_gives_cocos_twelve_numbers_and_voc07_ap50_and_writes_detections_and_a_picture(trained, tmp_path):
    spec = json.loads((trained / "spec.json").read_text())
    out = tmp_path / "metrics.json"
    worker.evaluate(spec, str(trained / "model.pt"), str(out), CPU)
    metrics = json.loads(out.read_text())
    assert set(STATS) | {"AP50_voc07", "n"} <= set(metrics) and metrics["n"] == 8 and "detections" not in metrics
    detections = json.loads((tmp_path / "detections.json").read_text())
    gt = json.loads(open(os.path.join(spec["data"]["dir"], "val.json")).read())
    assert {d["image_id"] for d in detections} <= {im["id"] for im in gt["images"]}
    assert {d["category_id"] for d in detections} <= set(range(1, 21))
    for d in detections:  # original image pixels, inside the image
        image = next(im for im in gt["images"] if im["id"] == d["image_id"])
        x, y, w, h = d["bbox"]
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= image["width"] + 1e-6
    assert Image.open(tmp_path / "predictions.png").size[0] > 64


def _evaluate_rank(rank, port, spec, checkpoint, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), **AGENT_STORE)
    world = distributed.init("cpu")
    try:
        task = DetectionTask(spec)
        model = task.build_model(pretrained=False)
        model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
        torch.save(task.evaluate(model, "test", world), f"{out}.{rank}")
    finally:
        distributed.shutdown()


@pytest.mark.slow  # a cold start or several processes: seconds
def test_two_gloo_ranks_detect_each_image_once_and_score_as_one_process(trained, tmp_path):
    spec = json.loads((trained / "spec.json").read_text())
    task = DetectionTask(spec)
    model = task.build_model(pretrained=False)
    model.load_state_dict(torch.load(trained / "model.pt", weights_only=True)["model"])
    alone = task.evaluate(model, "test", CPU)
    with rendezvous() as port:
        mp.spawn(_evaluate_rank, args=(port, spec, str(trained / "model.pt"), str(tmp_path / "r")), nprocs=2,
                 join=True)
    rank0, rank1 = torch.load(tmp_path / "r.0"), torch.load(tmp_path / "r.1")
    key = lambda d: (d["image_id"], d["category_id"], d["score"], tuple(d["bbox"]))
    assert sorted(map(key, rank0["detections"])) == sorted(map(key, alone["detections"]))
    assert rank1["detections"] == []  # gathered and scored once, on rank 0
    for name in (*STATS, "AP50_voc07", "n"):
        assert rank0[name] == rank1[name] == pytest.approx(alone[name], abs=1e-6), name


def test_frelon_detect_finds_objects_in_a_folder_with_class_names_and_draws_them(trained, prepared, tmp_path):
    from frelon.cli import main

    images = json.loads((prepared / "splits.json").read_text())["val"]["images"]
    val = json.loads((prepared / "val.json").read_text())["images"][:2]
    folder = tmp_path / "mine"
    folder.mkdir()
    for image in val:
        Image.open(os.path.join(images, image["file_name"])).save(folder / image["file_name"].rsplit("/", 1)[1])
    assert main(["detect", str(trained / "model.pt"), str(folder), "--out", str(tmp_path / "d.json"),
                 "--draw", str(tmp_path / "drawn"), "--min-score", "0"]) == 0
    found = json.loads((tmp_path / "d.json").read_text())
    assert {d["file_name"] for d in found} == {str(p) for p in folder.iterdir()}
    assert all(d["category"] in ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
                                 "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
                                 "sheep", "sofa", "train", "tvmonitor") for d in found)
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == sorted(p.name for p in folder.iterdir())


def test_frelon_detect_refuses_a_classifier_checkpoint(tmp_path):
    from frelon.tasks.detection.inference import load_detector

    torch.save({"model": {}, "spec": {"task": "classification"}}, tmp_path / "model.pt")
    with pytest.raises(FrelonError, match="is a classification model, not a detector"):
        load_detector(tmp_path / "model.pt")


def test_an_image_with_more_objects_than_max_objects_trains_on_its_first_ones_counted_or_stops_if_asked(
        prepared, trained, tmp_path):
    full = DetectionTask(detection_spec(prepared, tmp_path / "full", **TRAIN)).dataset("train", train=True)
    crowded = [i for i, im in enumerate(full.images) if len(im["labels"]) > 1]
    spec = detection_spec(prepared, tmp_path / "one", **TRAIN)
    spec["detection"]["max_objects"] = 1
    task = DetectionTask(spec)
    dataset = task.dataset("train", train=True)  # the official code's rule: the first max_objects objects
    assert crowded and dataset.left_out == {"images": len(crowded),
                                            "objects": sum(len(full.images[i]["labels"]) - 1 for i in crowded)}
    for i, (kept, whole) in enumerate(zip(dataset.images, full.images)):
        assert kept["labels"] == whole["labels"][:1] and kept["boxes"] == whole["boxes"][:1], i
    images, targets = dataset.__getitems__(crowded)
    assert targets["mask"].sum(1).max() == 1
    model = task.build_model(pretrained=False)
    model.load_state_dict(torch.load(trained / "model.pt", weights_only=True)["model"])
    scores = task.evaluate(model, "test", CPU)
    assert scores["train_images_over_max_objects"] == len(crowded)
    assert scores["train_objects_left_out"] == dataset.left_out["objects"]
    spec["detection"]["too_many_objects"] = "error"
    with pytest.raises(FrelonError, match=rf"{len(crowded)} image\(s\) have more than detection.max_objects = 1 "
                                          r"objects, e.g. .*JPEGImages/.*\.jpg with [23]; raise max_objects"):
        DetectionTask(spec).dataset("train", train=True)


def test_keep_resolution_scores_each_image_at_its_own_size_padded_to_a_multiple_of_32(trained, tmp_path):
    from detection_fixtures import prepared_pictures
    from frelon.tasks.detection.task import size_buckets

    sizes = [(100, 60), (60, 100), (100, 60), (70, 70), (100, 60)]  # (width, height)
    pictures = [(Image.new("RGB", (w, h), (200, 30, 30)), [[5.0, 5.0, 30.0, 20.0]], [1]) for w, h in sizes]
    root = prepared_pictures(tmp_path / "sizes", pictures)
    spec = json.loads((trained / "spec.json").read_text())
    spec["data"]["dir"], spec["detection"]["test_resolution"] = str(root), "keep"
    spec["train"]["batch_size"] = 2
    task = DetectionTask(spec)
    dataset = task.dataset("val")
    canvases = [dataset.letterbox(i).canvas for i in range(len(dataset))]
    assert canvases == [(64, 128), (128, 64), (64, 128), (96, 96), (64, 128)]  # (side | 31) + 1, as --keep_res
    image, _ = dataset[0]
    letterbox, mean, std = dataset.letterbox(0), dataset.mean, dataset.std
    assert image.shape == (3, 64, 128) and (letterbox.left, letterbox.top) == (14, 2)
    inside = image[:, 2:62, 14:114] * std + mean  # the picture's own pixels, not resized
    assert torch.allclose(inside, torch.tensor([200, 30, 30]).view(3, 1, 1) / 255, atol=1e-6)
    assert (image[:, :2] * std + mean).abs().max() < 1e-6  # black around it
    assert size_buckets(dataset, [0, 1, 2, 3, 4], 2) == [[0, 2], [4], [1], [3]]
    model = task.build_model(pretrained=False)
    torch.nn.init.constant_(model.size[-1].bias, 3.0)  # untrained, with boxes of some size: detections everywhere
    found = task.detect(model, dataset, CPU)
    assert {d["image_id"] for d in found} == set(dataset.ids)
    for d in found:  # boxes in each image's own pixels
        w, h = sizes[dataset.ids.index(d["image_id"])]
        x, y, bw, bh = d["bbox"]
        assert 0 <= x and 0 <= y and x + bw <= w + 1e-6 and y + bh <= h + 1e-6


def test_a_missing_image_is_named_with_the_fix(prepared, tmp_path):
    import shutil

    copy = tmp_path / "prepared"
    shutil.copytree(prepared, copy)
    splits = json.loads((copy / "splits.json").read_text())
    shutil.copytree(splits["val"]["images"], tmp_path / "devkit")
    splits["val"]["images"] = str(tmp_path / "devkit")
    (copy / "splits.json").write_text(json.dumps(splits))
    first = json.loads((copy / "val.json").read_text())["images"][0]["file_name"]
    (tmp_path / "devkit" / first).unlink()
    spec = detection_spec(copy, tmp_path / "run", **TRAIN)
    with pytest.raises(FrelonError, match=f"{first} is missing .*extract the dataset completely"):
        DetectionTask(spec).dataset("val")[0]


def test_boxes_outside_the_image_are_clipped_or_dropped_and_counted_and_unknown_categories_refused(tmp_path):
    gt = {"images": [{"id": 1, "file_name": "a.jpg", "width": 50, "height": 40}],
          "categories": [{"id": 7, "name": "wasp"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [40, 30, 20, 20], "iscrowd": 0},
                          {"id": 2, "image_id": 1, "category_id": 7, "bbox": [60, 0, 5, 5], "iscrowd": 0},
                          {"id": 3, "image_id": 1, "category_id": 7, "bbox": [5, 5, 0, 5], "iscrowd": 0}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    _, images = coco.training_targets(tmp_path / "gt.json")
    assert images[1]["boxes"] == [[40.0, 30.0, 10.0, 10.0]]
    assert coco.summary(images)["boxes_clipped_to_image"] == 1 and coco.summary(images)["boxes_without_area"] == 2
    gt["annotations"][0]["category_id"] = 8
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    with pytest.raises(FrelonError, match="category id 8, which the file's categories do not list"):
        coco.training_targets(tmp_path / "gt.json")
    (tmp_path / "gt.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(FrelonError, match="lists no images or no categories"):
        coco.training_targets(tmp_path / "gt.json")


def test_a_coco_run_scores_against_the_original_category_ids(tmp_path):
    root = coco_folder(tmp_path / "c")
    coco.prepare(root, tmp_path / "prepared")
    spec = detection_spec(tmp_path / "prepared", tmp_path / "run", epochs=1, batch_size=8)
    spec["data"]["kind"] = "coco"
    task = DetectionTask(spec)
    engine.fit(task, spec, CPU)
    model = task.build_model(pretrained=False)
    model.load_state_dict(torch.load(tmp_path / "run" / "model.pt", weights_only=True)["model"])
    result = task.evaluate(model, "test", CPU)
    assert "AP50_voc07" not in result and result["n"] == 8
    assert {d["category_id"] for d in result["detections"]} <= {1, 3, 18, 44, 90}


def test_a_box_inside_the_image_is_not_counted_clipped_for_float_round_off(tmp_path):
    # 379.02 + 67.17 - 379.02 is 67.16999999999996 in float64: the box is inside the 640-wide image
    gt = {"images": [{"id": 1, "file_name": "a.jpg", "width": 640, "height": 480}],
          "categories": [{"id": 7, "name": "wasp"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [379.02, 10.5, 67.17, 20.1],
                           "iscrowd": 0},
                          {"id": 2, "image_id": 1, "category_id": 7, "bbox": [600.0, 10.0, 40.01, 5.0],
                           "iscrowd": 0}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    _, images = coco.training_targets(tmp_path / "gt.json")
    assert coco.summary(images)["boxes_clipped_to_image"] == 1  # the second, 0.01 px past the edge
