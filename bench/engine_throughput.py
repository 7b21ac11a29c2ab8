"""Training throughput of the engine against a bare PyTorch loop: same model, data, batch, one process.

    python bench/engine_throughput.py                                     # classification, CPU, fp32
    python bench/engine_throughput.py --task detection --size 128         # CenterNet, CPU
    python bench/engine_throughput.py --device cuda --precision bf16 --channels-last --images 12000 --size 128

Classification: ResNet-18 on prepared hornet data (frelon's cached split, online mirror). Detection:
CenterNet-ResNet-18 on generated COCO-layout data (frelon's detection loader, the paper's augmentation).
The bare loop is what anyone would write: no history, checks, checkpoints or schedule. The first
epoch of each is warm-up; engine and bare loop alternate `--rounds` times, so drift hits both.
Target: the engine keeps at least 0.99 of the bare loop's images/s (on a GPU, with epochs long
enough that per-epoch costs do not decide the ratio). Beside them, the same model and step on one
batch kept on the device ("synthetic batch"): on a GPU the engine end to end should reach 0.9x of it,
i.e. the input pipeline hardly ever holds the GPU up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common
import torch
from torch.utils.data import DataLoader

FED_TARGET = 0.9  # on a GPU: the engine end to end >= 0.9x the rate of the same step on a batch kept there
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_spec(data: Path, out: Path, args: argparse.Namespace) -> dict:
    spec = common.demo_spec(args.task)
    spec.update(output=str(out), device=args.device)
    spec["data"]["dir"] = str(data)
    spec["model"].update(weights=None, weights_path=None)
    if args.task == "classification":
        spec["data"]["preprocessing"].update(resize=args.size, crop=args.size)  # as the data was prepared
    else:
        from frelon.data.crops import AUGMENT_DEFAULTS

        spec["data"]["preprocessing"]["input_size"] = args.size
        spec["detection"].update(input_size=args.size, augment=AUGMENT_DEFAULTS)  # the paper's, not the demo's
        spec["model"]["decoder"] = args.decoder
    spec["train"].update(world_size=1, batch_size=args.batch, epochs=args.epochs, precision=args.precision,
                         channels_last=args.channels_last, workers=args.workers, log_every=args.log_every,
                         checkpoint_every=0, val_every=0, compile=False)
    return spec


def make_task(spec: dict):
    if spec["task"] == "classification":
        from frelon.tasks.classification import ClassificationTask

        return ClassificationTask(spec)
    from frelon.tasks.detection.task import DetectionTask

    return DetectionTask(spec)


def engine_throughput(spec: dict, device: torch.device) -> list[float]:
    from frelon.train import engine
    from frelon.parallel.distributed import World

    epochs = engine.fit(make_task(spec), spec, World(0, 1, 0, device)).epochs
    return [row["images_per_second"] for row in epochs]


def bare_parts(spec: dict, device: torch.device):
    """What a bare loop trains with: the task's model, dataset, an optimizer and the loss, on `device`."""
    task, cfg = make_task(spec), spec["train"]
    torch.manual_seed(spec["seed"])
    fmt = torch.channels_last if cfg["channels_last"] else torch.contiguous_format
    model = task.build_model(pretrained=False).to(device, memory_format=fmt)
    dataset = task.dataset("train", train=True)
    if spec["task"] == "classification":
        dataset.raw = False  # float batches made on the host, as such a loop has them
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                                    weight_decay=cfg["weight_decay"])
        loss_fn = torch.nn.CrossEntropyLoss()
    else:
        from frelon.tasks.detection.loss import centernet_loss

        optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
        weights = spec["detection"]["size_weight"], spec["detection"]["offset_weight"]
        loss_fn = lambda outputs, targets: centernet_loss(outputs, targets, *weights)[0]  # noqa: E731
    return task, model, dataset, optimizer, loss_fn, fmt


def on_device(batch, device: torch.device, fmt):
    """A loader's batch as (images, targets) on `device` (a raw batch is finished there, as the engine does)."""
    from frelon.train.engine import move

    channels_last = fmt == torch.channels_last
    batch = move(batch, device, channels_last)
    if hasattr(batch, "finish"):
        batch = move(batch.finish(), device, channels_last)
    return batch


def bare_throughput(spec: dict, device: torch.device) -> list[float]:
    """The loop anyone would write, on the task's own model and dataset."""
    task, model, dataset, optimizer, loss_fn, fmt = bare_parts(spec, device)
    cfg = spec["train"]
    loader = DataLoader(dataset, batch_size=cfg["batch_size"], shuffle=True, num_workers=cfg["workers"],
                        collate_fn=task.collate, pin_memory=device.type == "cuda")
    dtype = PRECISIONS[cfg["precision"]]
    rates = []
    for epoch in range(cfg["epochs"]):
        dataset.set_epoch(epoch)
        model.train()
        start, seen = time.perf_counter(), 0
        for batch in loader:
            x, y = on_device(batch, device, fmt)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(x)
        common.sync(device)
        rates.append(seen / (time.perf_counter() - start))
    return rates


def synthetic_throughput(spec: dict, device: torch.device) -> list[float]:
    """The same model and step on ONE batch kept on the device, as many steps as an epoch has: what the
    device computes when the input costs nothing (the rate the engine end to end is held against)."""
    task, model, dataset, optimizer, loss_fn, fmt = bare_parts(spec, device)
    cfg = spec["train"]
    loader = DataLoader(dataset, batch_size=cfg["batch_size"], shuffle=True, collate_fn=task.collate)
    x, y = on_device(next(iter(loader)), device, fmt)
    steps = max(1, len(dataset) // cfg["batch_size"])
    dtype = PRECISIONS[cfg["precision"]]
    model.train()
    rates = []
    for _ in range(cfg["epochs"]):
        start = time.perf_counter()
        for _ in range(steps):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        common.sync(device)
        rates.append(steps * len(x) / (time.perf_counter() - start))
    return rates


def prepare_data(root: Path, args: argparse.Namespace) -> Path:
    if args.task == "classification":
        raw = common.hornet_jpegs(root, args.images, args.size + 16)
        return common.prepared_hornet(raw, root / "prepared", args.size)
    # images about the input size (COCO's are about 640 x 480 for a 512 input)
    return common.prepared_coco(root, train=args.images, val=4, size=args.size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="classification", choices=["classification", "detection"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--images", type=int, default=400, help="generated training images")
    parser.add_argument("--size", type=int, default=32, help="classification: image size; detection: input size")
    parser.add_argument("--decoder", default="deconv", help="CenterNet's decoder (deconv, dcn, unet)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="the first is warm-up and not counted")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="alternate engine and bare loop this often")
    parser.add_argument("--target", type=float, default=0.99)
    common.arguments(parser, None)
    args = parser.parse_args()
    args.name = args.name or f"engine_{args.task}"
    if not common.cuda_or_skip(args, "engine_throughput", [f"engine/bare {args.task}"]):
        return 0
    if reason := common.missing("yaml", "pandas", "tqdm"):
        return common.skip(args, "engine_throughput", reason, [f"engine/bare {args.task}"])
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        data = prepare_data(Path(tmp), args)
        prepare_seconds = time.perf_counter() - start
        engine_rates, bare_rates = [], []
        for round_ in range(args.rounds):  # the order flips each round: whatever comes second gains nothing
            spec = make_spec(data, Path(tmp) / f"run{round_}", args)
            for which in ("engine", "bare")[::1 if round_ % 2 == 0 else -1]:
                if which == "engine":
                    engine_rates += engine_throughput(spec, device)[1:]
                else:
                    bare_rates += bare_throughput(spec, device)[1:]
        synthetic_rates = synthetic_throughput(make_spec(data, Path(tmp) / "synthetic", args), device)[1:]
    engine_ips, bare_ips = statistics.median(engine_rates), statistics.median(bare_rates)
    synthetic_ips = statistics.median(synthetic_rates)
    ratio, fed = engine_ips / bare_ips, engine_ips / synthetic_ips
    what = "ResNet-18" if args.task == "classification" else f"CenterNet-R18 {args.decoder}"
    setting = f"{what} {args.size}px b{args.batch} {args.precision}{' CL' if args.channels_last else ''}"
    gpu = args.device == "cuda"  # the input keeps up with a GPU; a CPU trains far slower than its loader
    rows = [common.row(f"engine/bare {args.task} ({setting})", round(ratio, 3), "ratio", f">= {args.target}",
                       ratio >= args.target),
            common.row(f"engine/synthetic batch {args.task} ({setting})", round(fed, 3), "ratio",
                       f">= {FED_TARGET}" if gpu else None, fed >= FED_TARGET if gpu else None),
            common.row(f"engine {args.task} training", round(engine_ips, 1), "images/s"),
            common.row(f"bare loop {args.task} training", round(bare_ips, 1), "images/s"),
            common.row(f"synthetic batch {args.task} training", round(synthetic_ips, 1), "images/s")]
    common.write(args, "engine_throughput", rows, args.device, task=args.task, precision=args.precision,
                 channels_last=args.channels_last, batch=args.batch, size=args.size, images=args.images,
                 workers=args.workers, engine_rates=[round(r, 1) for r in engine_rates],
                 bare_rates=[round(r, 1) for r in bare_rates],
                 synthetic_rates=[round(r, 1) for r in synthetic_rates], prepare_seconds=round(prepare_seconds, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
