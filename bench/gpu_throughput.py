"""How much of the GPU ResNet-18 training uses: bf16 matmul rate against training FLOP/s.

    python bench/gpu_throughput.py --device cuda                    # 8192^3 matmuls, ResNet-18 at 224
    python bench/gpu_throughput.py --matmul 512 --size 64 --batch 8 # CPU: does it run

1. The measured bf16 matmul rate: `--matmul`^3 products (8192: about 790 TFLOP/s on an H200), the
   mean of 10 after 3 warm-ups; the ceiling the training is compared with.
2. ResNet-18 (frelon's, 1000 classes) training images/s at `--size` 224, batch `--batch`, bf16
   autocast, channels-last, SGD, on one synthetic batch resident on the GPU (the model's speed, not
   the loader's): eager, then torch.compile (its compile time apart).
3. The fraction of the matmul rate the training reaches, counting a training step as 3x the forward
   FLOPs (forward ~1.82 GFLOP per image at 224, scaled by (size/224)^2). No target: a reference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import common
import torch

FORWARD_GFLOP_224 = 1.82  # ResNet-18, one 224 x 224 image (multiply-adds counted as 2)


def matmul_tflops(n: int, device: torch.device) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    common.sync(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    common.sync(device)
    return 2 * n**3 * 10 / (time.perf_counter() - start) / 1e12


def training_rate(model: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> tuple[float, float]:
    """(images/s, seconds of the first step, which includes compiling)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch,), device=device)
    times = []
    for _ in range(args.warmup + args.steps):
        common.sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        common.sync(device)
        times.append(time.perf_counter() - start)
    return args.batch / statistics.median(times[args.warmup:]), times[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--matmul", type=int, default=8192)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (the first compiles)")
    parser.add_argument("--no-compile", action="store_true")
    common.arguments(parser, "gpu_throughput")
    args = parser.parse_args()
    if not common.cuda_or_skip(args, "gpu_throughput", ["bf16 matmul rate", "ResNet-18 training bf16 CL"]):
        return 0
    from frelon.models.resnet import ResNet

    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    peak = matmul_tflops(args.matmul, device)
    flops_per_image = 3 * FORWARD_GFLOP_224 * 1e9 * (args.size / 224) ** 2
    rows = [common.row(f"bf16 matmul {args.matmul}^3", round(peak, 1 if peak > 1 else 4), "TFLOP/s")]
    details = {"matmul_tflops": round(peak, 2), "batch": args.batch, "size": args.size}
    for compiled in (False, True):
        label = f"ResNet-18 training {args.size}px b{args.batch} bf16 CL{', compiled' if compiled else ''}"
        if compiled and args.no_compile:
            rows.append(common.skipped_row(label, "--no-compile"))
            continue
        torch.manual_seed(0)
        model = ResNet("resnet18", 1000).to(device, memory_format=torch.channels_last).train()
        try:
            rate, first = training_rate(torch.compile(model) if compiled else model, args, device)
        except Exception as error:  # noqa: BLE001 - a compile failure is a finding, not a crash
            rows.append(common.row(label, f"failed: {type(error).__name__}: {str(error)[:100]}", status="fail"))
            continue
        fraction = rate * flops_per_image / (peak * 1e12)
        rows += [common.row(label, round(rate, 1), "images/s"),
                 common.row(f"  fraction of the bf16 matmul rate{' (compiled)' if compiled else ''}",
                            round(fraction, 3), "of peak")]
        details["compiled" if compiled else "eager"] = {"images_per_second": round(rate, 1),
                                                        "first_step_seconds": round(first, 1),
                                                        "fraction_of_matmul": round(fraction, 4)}
    common.write(args, "gpu_throughput", rows, args.device, **details)
    return 0


if __name__ == "__main__":
    sys.exit(main())
