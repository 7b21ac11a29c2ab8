"""CenterNet detection as a task of the one engine: model, data, loss, and COCO mAP over every image once."""

from __future__ import annotations

import contextlib
from dataclasses import replace

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from frelon.atomic import write_json
from frelon.data.coco import CategoryIndex
from frelon.data.dataset import loader_workers
from frelon.errors import FrelonError
from frelon.evaluate.detection import coco_summary, coco_tables, voc07_ap50
from frelon.models.centernet import CenterNet
from frelon.models.resnet import WIDTH
from frelon.models.weights import load_pretrained
from frelon.tasks.detection.data import DetectionSet, collate
from frelon.tasks.detection.decode import decode, heatmap_probabilities, merge_flip
from frelon.tasks.detection.loss import centernet_loss
from frelon.parallel.distributed import World, all_gather_objects, shard, stoppable

PICTURE_IMAGES = 8  # validation images in a run's picture


def build_model(model_spec: dict, num_classes: int) -> CenterNet:
    return CenterNet(num_classes, arch=model_spec["arch"], norm=model_spec["norm"], decoder=model_spec["decoder"],
                     width=model_spec.get("width", WIDTH))


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, flip_test: bool, top_k: int):
    """Boxes (XYXY, input pixels), scores and contiguous labels of the top-k peaks of each image."""
    outputs = model(images)
    outputs = merge_flip(outputs, model(images.flip(-1))) if flip_test else heatmap_probabilities(outputs)
    boxes, scores, labels = decode(outputs["heatmap"], outputs["size"], outputs["offset"], k=top_k)
    return boxes * CenterNet.stride, scores, labels


def to_results(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, image_id: int, letterbox,
               categories: CategoryIndex) -> list[dict]:
    """One image's detections as COCO results: original pixels, `[x, y, w, h]`, the dataset's category ids."""
    xyxy = letterbox.to_original(boxes.cpu().double())
    wh = xyxy[:, 2:] - xyxy[:, :2]
    keep = (wh > 0).all(1)
    return [{"image_id": image_id, "category_id": categories.category_id(int(label)),
             "bbox": [round(v, 2) for v in (*box[:2].tolist(), *size.tolist())], "score": round(float(score), 5)}
            for box, size, score, label in zip(xyxy[keep], wh[keep], scores.cpu()[keep], labels.cpu()[keep])]


def size_buckets(dataset: DetectionSet, indices: list[int], batch_size: int) -> list[list[int]]:
    """Positions in `indices` as batches of at most `batch_size` images whose inputs have one (height, width)
    (`test_resolution: keep`: COCO's 640 x 480 and 480 x 640 photos make two large groups), in order of
    first appearance."""
    groups: dict[tuple[int, int], list[int]] = {}
    for position, i in enumerate(indices):
        groups.setdefault(dataset.letterbox(i).canvas, []).append(position)
    return [group[start:start + batch_size] for group in groups.values() for start in range(0, len(group), batch_size)]


class DetectionTask:
    collate = staticmethod(collate)

    def __init__(self, spec: dict):
        self.spec = spec
        self.settings = spec["detection"]
        self._sets: dict[tuple[str, bool], DetectionSet] = {}

    def dataset(self, split: str, train: bool = False) -> DetectionSet:
        """The prepared set's `train` or `val` split (`test` is `val`: VOC07 test, COCO val2017)."""
        split = "train" if split == "train" else "val"
        if (split, train) not in self._sets:
            data = self.spec["data"]
            dataset = DetectionSet(data["dir"], split, data["preprocessing"], self.settings, train=train,
                                   seed=self.spec["seed"])
            if split == "train" and dataset.categories.ids != self.dataset("val").categories.ids:
                raise FrelonError(f"{dataset.annotations} and {self.dataset('val').annotations} list different "
                                  f"categories; a network's outputs need one list: prepare both splits from one "
                                  f"dataset")
            if dataset.left_out["images"]:
                print(f"{dataset.left_out['images']} training image(s) have more than detection.max_objects = "
                      f"{self.settings['max_objects']} objects: {dataset.left_out['objects']} object(s) beyond the "
                      f"first {self.settings['max_objects']} of each are left out (metrics.json counts them)",
                      flush=True)
            self._sets[split, train] = dataset
        return self._sets[split, train]

    def classes(self) -> list[dict]:
        categories = self.dataset("val").categories
        return [{"id": cid, "name": name} for cid, name in zip(categories.ids, categories.names)]

    def build_model(self, pretrained: bool, empty: bool = False) -> nn.Module:
        m = self.spec["model"]
        num_classes = self.dataset("val").num_classes
        with torch.device("meta") if empty else contextlib.nullcontext():
            model = build_model(m, num_classes)
        if pretrained and m["weights_path"]:
            load_pretrained(model.backbone, m["weights_path"])
        return model

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, targets = batch
        loss, terms = centernet_loss(model(images), targets, self.settings["size_weight"],
                                     self.settings["offset_weight"])
        n = len(images)
        return loss, {"samples": torch.tensor(n), **{k: v.float() * n for k, v in terms.items()},
                      # per image (epoch means divide by the images): boxes the augmentation pushed out of the picture
                      "dropped_boxes_per_image": targets["dropped"].sum() + targets["skipped"].sum()}

    def detect(self, model: nn.Module, dataset: DetectionSet, world: World) -> list[dict]:
        """COCO results for this rank's shard of `dataset` (a stop asked for meanwhile raises `StopRequested`
        on every rank)."""
        indices, device = shard(len(dataset), world), world.device
        was_training = model.training
        model.eval()
        results: list[dict] = []
        batch_size = self.spec["train"]["batch_size"]
        workers, common = loader_workers(self.spec["train"].get("workers", 0), dataset, device), None
        if dataset.keep_resolution:  # images at their own sizes: batches of one canvas size each
            loader = DataLoader(Subset(dataset, indices), batch_sampler=size_buckets(dataset, indices, batch_size),
                                collate_fn=collate, num_workers=workers)
            common = min(len(size_buckets(dataset, shard(len(dataset), replace(world, rank=rank)),
                                          batch_size)) for rank in range(world.world_size))
        else:
            loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, collate_fn=collate,
                                num_workers=workers)
        for images, index in stoppable(loader, len(dataset), batch_size, world, common):
            boxes, scores, labels = predict(model, images.to(device), self.settings["flip_test"],
                                            self.settings["top_k"])
            for i, b, s, lab in zip(index, boxes, scores, labels):
                results += to_results(b, s, lab, dataset.ids[i], dataset.letterbox(i), dataset.categories)
        model.train(was_training)
        return results

    def evaluate(self, model: nn.Module, split: str, world: World) -> dict:
        """COCO's 12 numbers (and VOC07 AP50 for VOC) of the split: each image detected on one rank only,
        each category evaluated by one rank only (pycocotools' evaluation takes 1/N of the time, not
        N-1 ranks waiting while rank 0 does it all)."""
        dataset = self.dataset(split)
        mine = self.detect(model, dataset, world)
        detections = [d for part in all_gather_objects(mine) for d in part]
        tables = all_gather_objects(coco_tables(dataset.annotations, detections, world.rank, world.world_size))
        scores = None
        if world.is_main:
            scores = {"n": len(dataset), **coco_summary(dataset.annotations, tables, quiet=True)}
            if self.spec["data"]["kind"] == "voc":
                scores["AP50_voc07"] = voc07_ap50(dataset.annotations, detections)["AP50_voc07"]
            # what training left out of images with more than max_objects objects (too_many_objects: keep_first)
            left_out = self.dataset("train", train=True).left_out
            scores.update(train_images_over_max_objects=left_out["images"], train_objects_left_out=left_out["objects"])
        scores = all_gather_objects(scores)[0]  # every rank records the same numbers
        return {**scores, "detections": detections if world.is_main else []}

    def write_outputs(self, result: dict, run_dir: Path) -> None:
        """`detections.json` (COCO results) and `predictions.png` (validation images, true boxes green,
        predictions red) beside the metrics; a diverged run's have no detections."""
        from frelon.report.detections import draw, save_grid

        detections = result.pop("detections")
        write_json(run_dir / "detections.json", detections)
        dataset = self.dataset("val")
        pictures = []
        for i in range(min(PICTURE_IMAGES, len(dataset))):
            info, image_id = dataset.images[i], dataset.ids[i]
            truths = [{"bbox": box, "name": dataset.categories.names[label]}
                      for box, label in zip(info["boxes"], info["labels"])]
            predictions = [{"bbox": d["bbox"], "score": d["score"], "name": dataset.categories.name(d["category_id"])}
                           for d in detections if d["image_id"] == image_id]
            pictures.append(draw(dataset.read(i), predictions, truths))
        save_grid(pictures, run_dir / "predictions.png")

