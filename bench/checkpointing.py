"""Gradient checkpointing on ResNet-18 at 224: activation bytes saved against step time.

    python bench/checkpointing.py                                  # CPU, batch 8
    python bench/checkpointing.py --device cuda --batch 64         # GPU, with peak memory

Target (Chen et al. 2016 report about 30% more time): checkpointing every stage stores at most
half the activation bytes of no checkpointing, for at most 1.4x its time per training step.
Prints one JSON line; exits 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from frelon.studies import checkpointing as study

STAGES = ["layer1", "layer2", "layer3", "layer4"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="resnet18", choices=study.MODELS)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="alternate the two policies this often")
    parser.add_argument("--max-saved-ratio", type=float, default=0.5)
    parser.add_argument("--max-time-ratio", type=float, default=1.4)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    x, y = study._batch(args.batch, args.size, device)
    result = {"bench": "checkpointing", "model": args.model, "size": args.size, "batch": args.batch,
              "device": study.device_name(device)}
    times: dict[str, list[float]] = {"none": [], "stages": []}
    for name, policy in (("none", "none"), ("stages", STAGES)):
        model = study.build(args.model, policy, device)
        result[f"saved_mb_{name}"] = round(study.saved_activation_bytes(model, x, y) / study.MB, 1)
        del model  # not allocated while the peak of the next measurement is taken
        if device.type == "cuda":
            result[f"peak_mb_{name}"] = round(study.training_memory_bytes(args.model, policy, args.batch,
                                                                          args.size, device) / study.MB, 1)
    for _ in range(args.rounds):  # alternate, so that drift in machine speed hits both alike
        for name, policy in (("none", "none"), ("stages", STAGES)):
            model = study.build(args.model, policy, device)
            times[name].append(study.step_seconds(model, x, y, args.steps, args.warmup))
    for name in times:
        result[f"step_ms_{name}"] = round(1000 * min(times[name]), 1)
    result["saved_ratio"] = round(result["saved_mb_stages"] / result["saved_mb_none"], 3)
    result["time_ratio"] = round(result["step_ms_stages"] / result["step_ms_none"], 3)
    result["pass"] = result["saved_ratio"] <= args.max_saved_ratio and result["time_ratio"] <= args.max_time_ratio
    print(json.dumps(result))
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
