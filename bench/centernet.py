"""CenterNet speed: inference with decoding, and training steps of each decoder.

    python bench/centernet.py --batches 1 --iterations 2 --decoders deconv --steps 0   # CPU (make bench)
    python bench/centernet.py --device cuda                                            # GPU: the numbers

Inference: images/s of the whole detector (network, 3x3 max-pool peaks, top-100, boxes) at
`--size` (512), batch 1 and 32, bf16 on GPU, beside the paper's 142 FPS for ResDCN-18 on a
Titan Xp (7 ms per image at 512, batch 1; Zhou et al. 2019, a reference, not measured here).
At batch 1 also `frelon detect`'s way, the fixed-size predictor (one CUDA graph replayed per
image; eager on a CPU), against the target of 710 images/s at 512 on a GPU, and whether its
boxes, scores and labels are eager `predict`'s.
Training: `--steps` Adam steps (focal + L1 + L1 on targets of random boxes) of each decoder,
images/s and peak memory. Writes bench/out/centernet.json (see common.py).
"""

from __future__ import annotations

import argparse
import sys
import time

import common
import torch

from frelon.studies.checkpointing import device_name
from frelon.models.centernet import DECODERS, CenterNet
from frelon.tasks.detection.loss import centernet_loss
from frelon.tasks.detection.predictor import FixedSizePredictor
from frelon.tasks.detection.targets import build_targets
from frelon.tasks.detection.task import predict

PAPER_FPS = 142  # ResDCN-18 at 512, Titan Xp, batch 1 (Zhou et al. 2019)
TARGET_FPS = 710  # batch 1 at 512 with decoding, on one H100/H200: five times the paper's
CLASSES = 80


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model(decoder: str, device: torch.device) -> CenterNet:
    torch.manual_seed(0)
    return CenterNet(CLASSES, decoder=decoder).to(device, memory_format=torch.channels_last)


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _timed(run, x: torch.Tensor, iterations: int, device: torch.device) -> float:
    """Seconds per call of `run(x)`, after 3 untimed calls."""
    for _ in range(3):
        run(x)
    _sync(device)
    start = time.perf_counter()
    for _ in range(iterations):
        run(x)
    _sync(device)
    return (time.perf_counter() - start) / iterations


def _result(bench: str, decoder: str, batch: int, size: int, seconds: float, device: torch.device,
            **details) -> dict:
    return {"bench": bench, "decoder": decoder, "size": size, "batch": batch,
            "ms_per_batch": round(1000 * seconds, 2), "images_per_second": round(batch / seconds, 1),
            "paper_fps_resdcn18_titan_xp": PAPER_FPS, "device": device_name(device), **details}


def inference(decoder: str, batch: int, size: int, iterations: int, device: torch.device) -> dict:
    model = _model(decoder, device).eval()
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    with _autocast(device):
        seconds = _timed(lambda images: predict(model, images, flip_test=False, top_k=100), x, iterations, device)
    return _result("centernet_inference", decoder, batch, size, seconds, device)


def fixed_size_inference(decoder: str, size: int, iterations: int, device: torch.device) -> dict:
    """Batch 1 through `FixedSizePredictor` (a CUDA graph on a GPU), and whether it gives eager `predict`'s
    boxes, scores and labels for the same image."""
    model = _model(decoder, device).eval()
    x = torch.randn(1, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    start = time.perf_counter()
    run = FixedSizePredictor(model, size, flip_test=False, top_k=100,
                             autocast=torch.bfloat16 if device.type == "cuda" else None, channels_last=True)
    _sync(device)
    build = time.perf_counter() - start
    seconds = _timed(run, x, iterations, device)
    with _autocast(device):
        eager = predict(model, x, flip_test=False, top_k=100)
    fixed = run(x)
    differences = {name: (a != b).sum().item() for name, a, b in zip(("boxes", "scores", "labels"), fixed, eager)}
    return _result("centernet_inference_fixed_size", decoder, 1, size, seconds, device,
                   iterations=iterations, cuda_graph=run.graphed is not None, build_seconds=round(build, 2),
                   values_unlike_eager=differences)


def _targets(batch: int, size: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    per_image = []
    for _ in range(batch):
        xy = torch.rand(8, 2, generator=g) * size * 0.7
        wh = 16 + torch.rand(8, 2, generator=g) * size * 0.3
        per_image.append(build_targets(torch.cat([xy, xy + wh], 1).clamp(max=size - 1),
                                       torch.randint(0, CLASSES, (8,), generator=g), CLASSES, (size, size)))
    return {k: torch.stack([t[k] for t in per_image]).to(device) for k in per_image[0]}


def training(decoder: str, batch: int, size: int, steps: int, device: torch.device) -> dict:
    model = _model(decoder, device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1.25e-4)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    targets = _targets(batch, size, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        with _autocast(device):
            loss, _ = centernet_loss(model(x), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(min(3, steps)):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"bench": "centernet_training", "decoder": decoder, "size": size, "batch": batch, "steps": steps,
            "images_per_second": round(batch / seconds, 1), "peak_memory_mb": peak and round(peak, 1),
            "device": device_name(device)}


def fixed_size_rows(decoder: str, size: int, iterations: int, device: torch.device, precision: str,
                    measured: list[dict]) -> list[dict]:
    """The fixed-size predictor's rows: its images/s against the target (at 512 on a GPU), and its agreement
    with eager `predict`; a failure to capture or run is a failed row, not a broken benchmark."""
    how = "CUDA graph" if device.type == "cuda" else "fixed-size predictor, eager on the CPU"
    metric = f"CenterNet-R18 {decoder} inference+decode {size}px b1 {precision}, {how}"
    # a replay takes about a millisecond on a GPU: ten times the eager rows' calls give a timing of some length
    iterations *= 10 if device.type == "cuda" else 1
    try:
        result = fixed_size_inference(decoder, size, iterations, device)
    except Exception as error:  # noqa: BLE001 - recorded in the table, the other rows still measured
        return [common.row(metric, f"failed: {type(error).__name__}: {str(error)[:150]}", status="fail")]
    measured.append(result)
    rate = result["images_per_second"]
    judged = device.type == "cuda" and size == 512
    unlike = {name: n for name, n in result["values_unlike_eager"].items() if n}
    target = f">= {TARGET_FPS}" if judged else f">= {TARGET_FPS} (GPU, 512 px)"
    return [common.row(metric, rate, "images/s", target, rate >= TARGET_FPS if judged else None),
            common.row(f"  its boxes, scores and labels = eager predict's ({decoder})",
                       "identical" if not unlike else f"differ: {unlike}", ok=not unlike)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="inference batch sizes")
    parser.add_argument("--iterations", type=int, default=50, help="timed inference batches")
    parser.add_argument("--decoders", nargs="+", default=list(DECODERS), choices=DECODERS)
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200, help="timed training steps per decoder (0: none)")
    common.arguments(parser, "centernet")
    args = parser.parse_args(argv)
    if not common.cuda_or_skip(args, "centernet", ["CenterNet inference"]):
        return 0
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    precision = "bf16" if device.type == "cuda" else "fp32"
    rows = [common.row("CenterNet ResDCN-18 512px b1, Titan Xp (Zhou et al. 2019)", PAPER_FPS, "images/s",
                       status="reference")]
    measured = []
    for decoder in args.decoders:
        for batch in args.batches:
            result = inference(decoder, batch, args.size, args.iterations, device)
            measured.append(result)
            rows.append(common.row(f"CenterNet-R18 {decoder} inference+decode {args.size}px b{batch} {precision}",
                                   result["images_per_second"], "images/s"))
        if 1 in args.batches:
            rows += fixed_size_rows(decoder, args.size, args.iterations, device, precision, measured)
    left_out = [what for what, out in (("inference b32", 32 not in args.batches), ("training", not args.steps)) if out]
    if device.type == "cpu" and left_out:
        rows.append(common.skipped_row(f"CenterNet {' and '.join(left_out)}",
                                       "GPU-only, bench/gpu.sh (minutes on a CPU)"))
    for decoder in args.decoders if args.steps else []:
        result = training(decoder, args.train_batch, args.size, args.steps, device)
        measured.append(result)
        peak = f", peak {result['peak_memory_mb']} MB" if result["peak_memory_mb"] else ""
        rows.append(common.row(f"CenterNet-R18 {decoder} training {args.size}px b{args.train_batch} {precision}{peak}",
                               result["images_per_second"], "images/s"))
    common.write(args, "centernet", rows, args.device, measurements=measured)
    return 0


if __name__ == "__main__":
    sys.exit(main())
