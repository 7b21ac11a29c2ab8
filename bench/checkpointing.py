"""Gradient checkpointing on ResNet-18 at 224: activation bytes saved against step time, eager and compiled.

    python bench/checkpointing.py --size 112 --batches 4                      # CPU: does it run
    python bench/checkpointing.py --device cuda --batches 64 256 --compile whole cudagraphs segments

Per-stage checkpointing (every stage one recomputed segment, frelon's `[layer1, ..., layer4]`)
against none, fp32 training steps (forward, backward, SGD) on one batch, the two alternating
`--rounds` times so that drift hits both. Target (Chen et al. 2016 report about 30% more time): at
most half the saved activation bytes, for at most 1.3x the step time, at every batch.

At batch 64 an H200 is host-bound (docs/measurements/2026-11-28-nvidia-h200: checkpointing's
recomputation and hooks, driven from Python, outlast the kernels), so compiled variants that cut
the host's work are tried in the order given, each on both policies at every `--compile-batches`:
  whole       torch.compile of the whole model, as frelon's `train.compile` does (`auto`, the
              course config's: on a GPU): the default GPU configuration;
  segments    torch.compile of each residual block (the units checkpointing recomputes), the
              segments themselves still run by torch.utils.checkpoint in eager;
  cudagraphs  whole with mode="reduce-overhead": the step's kernels replayed as CUDA graphs.
Each reports whether it compiled and ran, its step time against its own `none` (the target: at
most 1.3x, per-stage checkpointing's cost where both are compiled) and against eager `none` (what
compiling gains), and on a GPU its peak memory (does the compiled model still save memory?).
The result file is rewritten after every measurement, so a step cut short by its time limit keeps
what it measured; `--deadline` seconds skips the variants that would start after it.
"""

from __future__ import annotations

import argparse
import sys
import time

import common
import torch

from frelon.studies import checkpointing as study

STAGES = ["layer1", "layer2", "layer3", "layer4"]
POLICIES = {"none": "none", "stages": STAGES}
VARIANTS = ("whole", "segments", "cudagraphs")


def compiled(model: torch.nn.Module, variant: str) -> torch.nn.Module:
    if variant == "whole":
        return torch.compile(model)
    if variant == "cudagraphs":
        return torch.compile(model, mode="reduce-overhead")
    for _, unit in model.checkpoint_units():  # in place: run_units calls the compiled blocks
        unit.compile()
    return model


def peak_mb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / study.MB, 1) if device.type == "cuda" else None


def timed(model: torch.nn.Module, x, y, args, device: torch.device) -> tuple[float, float | None]:
    """Median step seconds after warm-up, and the peak memory of those steps (GPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = study.step_seconds(model, x, y, args.steps, args.warmup)
    return seconds, peak_mb(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="resnet18", choices=study.MODELS)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batches", type=int, nargs="+", default=[8])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compiled: at least 3)")
    parser.add_argument("--rounds", type=int, default=2, help="alternate the two policies this often")
    parser.add_argument("--compile", nargs="*", default=[], choices=VARIANTS, help="compiled variants to try")
    parser.add_argument("--compile-batches", type=int, nargs="*", help="batches to try them at (default: all)")
    parser.add_argument("--deadline", type=float, default=float("inf"), help="seconds; later variants are skipped")
    parser.add_argument("--max-saved-ratio", type=float, default=0.5)
    parser.add_argument("--max-time-ratio", type=float, default=1.3)
    common.arguments(parser, "checkpointing")
    args = parser.parse_args(argv)
    if not common.cuda_or_skip(args, "checkpointing"):
        return 0
    device, began = torch.device(args.device), time.perf_counter()
    rows, details = [], {"model": args.model, "size": args.size, "batches": {}}

    def save() -> None:
        common.write(args, "checkpointing", rows, args.device, **details)

    for batch in args.batches:
        x, y = study._batch(batch, args.size, device)
        d = details["batches"][batch] = {}
        for name, policy in POLICIES.items():
            model = study.build(args.model, policy, device)
            d[f"saved_mb_{name}"] = round(study.saved_activation_bytes(model, x, y) / study.MB, 1)
            del model
        times: dict[str, list[float]] = {"none": [], "stages": []}
        for _ in range(args.rounds):  # alternate, so that drift in machine speed hits both alike
            for name, policy in POLICIES.items():
                seconds, d[f"peak_mb_{name}"] = timed(study.build(args.model, policy, device), x, y, args, device)
                times[name].append(seconds)
        for name in times:
            d[f"step_ms_{name}"] = round(1000 * min(times[name]), 2)
        saved = d["saved_mb_stages"] / d["saved_mb_none"]
        ratio = d["step_ms_stages"] / d["step_ms_none"]
        where = f"{args.model} {args.size}px b{batch}"
        rows += [common.row(f"checkpointing saved bytes stages/none, {where}", round(saved, 3), "ratio",
                            f"<= {args.max_saved_ratio}", saved <= args.max_saved_ratio),
                 common.row(f"checkpointing step time stages/none, {where}", round(ratio, 3), "ratio",
                            f"<= {args.max_time_ratio}", ratio <= args.max_time_ratio),
                 common.row(f"step time none / stages, {where}", f"{d['step_ms_none']} / {d['step_ms_stages']}",
                            "ms")]
        save()

    if device.type == "cpu" and not args.compile:
        rows.append(common.skipped_row("checkpointing at 224px b64 and b256, compiled variants",
                                       "GPU-only, bench/gpu.sh (on a CPU a compile takes minutes)"))
    # variant by variant (the list's order is the priority), each at every batch, until the deadline
    for variant in args.compile:
        for batch in args.compile_batches if args.compile_batches is not None else args.batches:
            x, y = study._batch(batch, args.size, device)
            d = details["batches"].setdefault(batch, {})
            where = f"{args.model} {args.size}px b{batch}, compiled {variant}"
            if variant == "cudagraphs" and device.type != "cuda":
                rows.append(common.skipped_row(f"checkpointing {where}", "CUDA graphs need a GPU"))
                continue
            if time.perf_counter() - began > args.deadline:
                rows.append(common.skipped_row(f"checkpointing {where}", f"past the {args.deadline:.0f} s deadline"))
                continue
            try:
                ms = {}
                for name in ("stages", "none"):  # stages first: where a variant fails, it fails there
                    policy = POLICIES[name]
                    torch._dynamo.reset()  # a fresh compile per model: no cache shared between the two
                    start = time.perf_counter()
                    model = compiled(study.build(args.model, policy, device), variant)
                    seconds, peak = timed(model, x, y, args, device)
                    ms[name] = round(1000 * seconds, 2)
                    d[f"{variant}_{name}"] = {"step_ms": ms[name], "peak_mb": peak,
                                              "seconds_with_compile": round(time.perf_counter() - start, 1)}
                    del model
            except Exception as error:  # noqa: BLE001 - what failed is the finding
                message = f"{type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"
                d[f"{variant}_error"] = message
                rows.append(common.row(f"checkpointing {where}", f"failed: {message}", status="fail"))
                save()
                continue
            ratio = ms["stages"] / ms["none"]
            rows.append(common.row(f"checkpointing step time stages({variant})/none({variant}), b{batch}",
                                   round(ratio, 3), "ratio", f"<= {args.max_time_ratio}",
                                   ratio <= args.max_time_ratio))
            eager_none = d.get("step_ms_none")
            if eager_none:
                rows.append(common.row(f"step time stages({variant})/none(eager), b{batch}",
                                       round(ms["stages"] / eager_none, 3), "ratio"))
            rows.append(common.row(f"step time stages({variant}) / none({variant}) / none(eager), b{batch}",
                                   f"{ms['stages']} / {ms['none']} / {eager_none}", "ms"))
            if d[f"{variant}_stages"]["peak_mb"]:  # does the compiled model still save memory?
                rows.append(common.row(f"peak memory stages({variant}) / none({variant}) / none(eager), b{batch}",
                                       f"{d[f'{variant}_stages']['peak_mb']} / {d[f'{variant}_none']['peak_mb']} / "
                                       f"{d.get('peak_mb_none')}", "MB"))
            save()
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
