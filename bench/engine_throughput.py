"""Training throughput of the engine against a bare PyTorch loop: same model, data and batch, one process.

    python bench/engine_throughput.py                          # CPU, fp32
    python bench/engine_throughput.py --device cuda --precision bf16 --channels-last

Target: the engine keeps at least 0.97 of the bare loop's images/s. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def prepare_data(root: Path, images: int, size: int) -> Path:
    from frelon.data.demo import generate_hornet
    from frelon.data.folder import prepare

    generate_hornet(root / "raw", images * 36 // 100, images * 64 // 100, size=size + 16, seed=0)
    prepare(root / "raw", ["absence", "presence"], 0.05, 0.05, size, 0, root / "prepared")
    return root / "prepared"


def make_spec(data: Path, out: Path, args: argparse.Namespace) -> dict:
    from frelon import spec as frelon_spec

    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config["datasets"]["hornet"]["image_size"] = args.size  # the size `prepare_data` cached
    spec = frelon_spec.resolve(config, "results/runs/finetune/random")
    spec.update(output=str(out), device=args.device)
    spec["data"]["dir"] = str(data)
    spec["train"].update(world_size=1, batch_size=args.batch, epochs=args.epochs, precision=args.precision,
                         channels_last=args.channels_last, workers=args.workers, log_every=args.log_every,
                         checkpoint_every=0)
    return spec


def engine_throughput(spec: dict, device: torch.device) -> list[float]:
    from frelon.tasks.classification import ClassificationTask
    from frelon.train import engine
    from frelon.train.distributed import World

    epochs = engine.fit(ClassificationTask(spec), spec, World(0, 1, 0, device))
    return [row["images_per_second"] for row in epochs]


def bare_throughput(spec: dict, device: torch.device) -> list[float]:
    """The loop anyone would write: no history, no checks, no checkpoints."""
    from frelon.tasks.classification import ClassificationTask

    task, cfg = ClassificationTask(spec), spec["train"]
    torch.manual_seed(spec["seed"])
    model = task.build_model(pretrained=False)
    fmt = torch.channels_last if cfg["channels_last"] else torch.contiguous_format
    model = model.to(device, memory_format=fmt)
    dataset = task.dataset("train", train=True)
    loader = DataLoader(dataset, batch_size=cfg["batch_size"], shuffle=True, num_workers=cfg["workers"],
                        pin_memory=device.type == "cuda")
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                                weight_decay=cfg["weight_decay"])
    loss_fn = nn.CrossEntropyLoss()
    dtype = PRECISIONS[cfg["precision"]]
    rates = []
    for epoch in range(cfg["epochs"]):
        dataset.set_epoch(epoch)
        model.train()
        start, seen = time.perf_counter(), 0
        for x, y in loader:
            x = x.to(device, non_blocking=True, memory_format=fmt)
            y = y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(seen / (time.perf_counter() - start))
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4, help="the first is warm-up and not counted")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="alternate engine and bare loop this often")
    parser.add_argument("--target", type=float, default=0.97)
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_data(Path(tmp), args.images, args.size)
        engine_rates, bare_rates = [], []
        for round_ in range(args.rounds):
            spec = make_spec(data, Path(tmp) / f"run{round_}", args)
            engine_rates += engine_throughput(spec, device)[1:]
            bare_rates += bare_throughput(spec, device)[1:]
    engine_ips, bare_ips = statistics.median(engine_rates), statistics.median(bare_rates)
    ratio = engine_ips / bare_ips
    print(json.dumps({"bench": "engine_throughput", "device": torch.cuda.get_device_name() if args.device == "cuda"
                      else "cpu", "threads": torch.get_num_threads(), "precision": args.precision,
                      "channels_last": args.channels_last, "batch": args.batch, "size": args.size,
                      "engine_images_per_second": round(engine_ips, 1), "bare_images_per_second": round(bare_ips, 1),
                      "ratio": round(ratio, 4), "target": args.target, "ok": ratio >= args.target}))
    return 0 if ratio >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
