"""Where the time of a checkpointed training step goes: host (Python and kernel launches) or device.

    python bench/checkpointing_profile.py --device cuda --batches 64 256

For each batch and variant, prints one JSON line with the median step time (synchronised), the
host time to issue one step without waiting for the device, and the device's kernel time per step
(torch.profiler). Variants: no checkpointing; every stage checkpointed as frelon does it; the same
without saving and restoring the RNG state (frelon's models draw no random numbers in forward);
the same without keeping the batch-norm statistics (not exact: for the cost only); every block.
When the host time exceeds the kernel time, the step is bound by the host and checkpointing's extra
host work shows up in full in the step time. Writes bench/out/checkpointing_profile.json (every
line; summary rows for `none` and `stages`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time

import common
import torch
from torch.profiler import ProfilerActivity, profile

from frelon.studies import checkpointing as study
from frelon.models import checkpointing

STAGES = ["layer1", "layer2", "layer3", "layer4"]


@contextlib.contextmanager
def variant(preserve_rng_state: bool = True, keep_statistics: bool = True):
    original_checkpoint, original_keep = checkpointing.checkpoint, checkpointing._batch_norm_statistics_kept
    checkpointing.checkpoint = lambda *a, **k: original_checkpoint(*a, **{**k, "preserve_rng_state": preserve_rng_state})
    if not keep_statistics:
        checkpointing._batch_norm_statistics_kept = lambda units: contextlib.nullcontext()
    try:
        yield
    finally:
        checkpointing.checkpoint, checkpointing._batch_norm_statistics_kept = original_checkpoint, original_keep


def measure(model_name: str, policy, batch: int, size: int, device: torch.device, steps: int) -> dict:
    model = study.build(model_name, policy, device)
    x, y = study._batch(batch, size, device)
    step_ms = 1000 * study.step_seconds(model, x, y, steps, warmup=5)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    host = []
    for _ in range(steps):
        study._sync(device)
        start = time.perf_counter()
        study._train_step(model, optimizer, x, y)
        host.append(time.perf_counter() - start)  # issued, not necessarily run
    study._sync(device)
    row = {"step_ms": round(step_ms, 2), "host_ms": round(1000 * statistics.median(host), 2)}
    if device.type == "cuda":
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                study._train_step(model, optimizer, x, y)
            study._sync(device)
        kernel_us = sum(e.self_device_time_total for e in prof.key_averages())
        row["kernel_ms"] = round(kernel_us / 1000 / 3, 2)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="resnet18", choices=study.MODELS)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batches", type=int, nargs="+", default=[8])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--cudnn-benchmark", action="store_true")
    common.arguments(parser, "checkpointing_profile")
    args = parser.parse_args()
    if not common.cuda_or_skip(args, "checkpointing_profile"):
        return 0
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    variants = [("none", "none", {}), ("stages", STAGES, {}),
                ("stages-no-rng-state", STAGES, {"preserve_rng_state": False}),
                ("stages-no-bn-keeping", STAGES, {"keep_statistics": False}),
                ("stages-neither", STAGES, {"preserve_rng_state": False, "keep_statistics": False}),
                ("all", "all", {}), ("all-no-rng-state", "all", {"preserve_rng_state": False})]
    lines, rows = [], []
    for batch in args.batches:
        for name, policy, options in variants:
            with variant(**options):
                row = measure(args.model, policy, batch, args.size, device, args.steps)
            lines.append({"model": args.model, "size": args.size, "batch": batch, "variant": name,
                          "cudnn_benchmark": args.cudnn_benchmark, **row})
            print(json.dumps(lines[-1]), flush=True)
            if name in ("none", "stages"):
                parts = " / ".join(f"{row[k]}" for k in ("step_ms", "host_ms", "kernel_ms") if k in row)
                rows.append(common.row(f"{name} b{batch}: step / host{' / kernel' if 'kernel_ms' in row else ''}",
                                       parts, "ms"))
    common.write(args, "checkpointing_profile", rows, args.device, lines=lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
