"""The training loop: reads top to bottom, one epoch after another, on 1 to N processes."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from frelon.atomic import torch_save, write_json, write_text
from frelon.data.dataset import CachedSplit
from frelon.evaluate.classification import confusion_matrix, metrics
from frelon.models.resnet import ResNet
from frelon.models.weights import load_pretrained
from frelon.train.distributed import World, all_reduce_sum
from frelon.train.schedules import build_scheduler


def build_model(spec: dict, pretrained: bool) -> ResNet:
    """The spec's network; with `pretrained`, its backbone starts from the spec's weights file."""
    model = ResNet(spec["model"]["arch"], num_classes=spec["model"]["num_classes"])
    if pretrained and spec["model"]["weights_path"]:
        load_pretrained(model, spec["model"]["weights_path"])
    return model


def load_split(spec: dict, split: str, train: bool = False) -> CachedSplit:
    data = spec["data"]
    return CachedSplit(Path(data["dir"]) / f"{split}.pt", data["mean"], data["std"], flip=train)


def train(spec: dict, world: World) -> None:
    """Train the spec's model; rank 0 writes history.csv after every epoch and model.pt at the end."""
    cfg, out = spec["train"], Path(spec["output"])
    torch.manual_seed(spec["seed"])
    model = build_model(spec, pretrained=True).to(world.device)
    net = model
    if world.world_size > 1:
        net = DistributedDataParallel(model, device_ids=[world.device.index] if world.device.type == "cuda" else None)

    train_set, val_set = load_split(spec, "train", train=True), load_split(spec, "val")
    sampler = DistributedSampler(train_set, num_replicas=world.world_size, rank=world.rank,
                                 shuffle=True, seed=spec["seed"])
    loader = DataLoader(train_set, batch_size=cfg["batch_size"], sampler=sampler)
    torch.manual_seed(spec["seed"] + 1 + world.rank)  # augmentation randomness differs per rank

    optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                                weight_decay=cfg["weight_decay"])
    steps_per_epoch = len(loader)
    scheduler = build_scheduler(optimizer, cfg["epochs"] * steps_per_epoch,
                                round(cfg["warmup_epochs"] * steps_per_epoch),
                                cfg["warmup_start_factor"], cfg["final_lr_factor"])
    loss_fn = nn.CrossEntropyLoss()
    history = []
    start = time.perf_counter()
    for epoch in range(cfg["epochs"]):
        sampler.set_epoch(epoch)
        net.train()
        totals = torch.zeros(3, dtype=torch.float64, device=world.device)  # loss sum, correct, count
        epoch_start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg['epochs']}", disable=not world.is_main, leave=False,
                   mininterval=0.5 if sys.stderr.isatty() else 30)  # a log file gets a line now and then
        for x, y in bar:
            x, y = x.to(world.device), y.to(world.device)
            logits = net(x)
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            totals[0] += loss.detach() * len(y)
            totals[1] += (logits.argmax(1) == y).sum()
            totals[2] += len(y)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        all_reduce_sum(totals)
        seconds = time.perf_counter() - epoch_start
        val = metrics(confusion_matrix(model, val_set, spec["model"]["num_classes"], world), val_set.classes)
        history.append({
            "epoch": epoch + 1, "lr": lr, "train_loss": float(totals[0] / totals[2]),
            "train_accuracy": float(totals[1] / totals[2]), "val_accuracy": val["accuracy"],
            "val_balanced_accuracy": val["balanced_accuracy"], "epoch_seconds": seconds,
            "images_per_second": float(totals[2]) / seconds,
        })
        if world.is_main:
            write_text(out / "history.csv", pd.DataFrame(history).to_csv(index=False))
            row = history[-1]
            print(f"epoch {row['epoch']}: loss {row['train_loss']:.4f}, train acc {row['train_accuracy']:.3f}, "
                  f"val acc {row['val_accuracy']:.3f}, {row['images_per_second']:.0f} img/s", flush=True)
    if world.is_main:
        torch_save({"model": model.state_dict(), "spec": spec, "epochs": cfg["epochs"],
                    "train_seconds": time.perf_counter() - start}, out / "model.pt")


def evaluate(spec: dict, checkpoint: str, out: str, world: World) -> None:
    """Score a trained model on the test split; rank 0 writes the metrics JSON."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = build_model(spec, pretrained=False)
    model.load_state_dict(state["model"])
    test_set = load_split(spec, "test")
    result = metrics(confusion_matrix(model.to(world.device), test_set, spec["model"]["num_classes"], world),
                     test_set.classes)
    if world.is_main:
        print(f"{spec['experiment']}: test accuracy {result['accuracy']:.4f}, balanced accuracy "
              f"{result['balanced_accuracy']:.4f} over {result['n']} images", flush=True)
        write_json(out, {"experiment": spec["experiment"], "split": "test",
                         "train_seconds": state["train_seconds"], **result})
