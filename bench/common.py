"""What every benchmark shares: where results go, one row per figure, skips with a reason.

A benchmark writes `<out>/<name>.json`: `{"bench", "name", "status": "ok" | "skipped", "reason",
"machine", "rows": [{"metric", "value", "unit", "target", "status"}], ...details}` and prints it as
one JSON line. A row's status is `pass` or `fail` against its target, `reference` for a published
figure beside ours, `info` for a figure with no target, `skipped` with the reason as its value.
`bench/summary.py` gathers the files into one table. Benchmarks exit 0 when they ran, whatever the
targets say (the summary says that): a non-zero exit means the benchmark itself broke.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()  # the benchmark's wall time is counted from its first import of this module
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # frelon without installing it (a GPU machine's bare Python)


def arguments(parser: argparse.ArgumentParser, name: str | None) -> argparse.ArgumentParser:
    parser.add_argument("--out", default=os.environ.get("BENCH_OUT", str(REPO / "bench" / "out")),
                        help="folder for <name>.json (default bench/out, or $BENCH_OUT)")
    parser.add_argument("--name", default=name, help="result file name, without .json")
    return parser


def cpu_count() -> int:
    """Cores this process may use (a container's share, not the host's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine(device: str = "cpu") -> dict:
    import torch

    info = {"cpus": cpu_count(), "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "python": platform.python_version()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def row(metric: str, value, unit: str = "", target: str | None = None, ok: bool | None = None,
        status: str | None = None) -> dict:
    """A figure; `ok` turns into pass/fail when a target applies, else the row is `status` or info."""
    if status is None:
        status = "info" if ok is None else "pass" if ok else "fail"
    return {"metric": metric, "value": value, "unit": unit, "target": target, "status": status}


def skipped_row(metric: str, reason: str, target: str | None = None) -> dict:
    return row(metric, f"skipped: {reason}", target=target, status="skipped")


def write(args: argparse.Namespace, bench: str, rows: list[dict], device: str = "cpu", **details) -> dict:
    result = {"bench": bench, "name": args.name, "status": "ok", "machine": machine(device), "rows": rows, **details}
    _save(args, result)
    return result


def skip(args: argparse.Namespace, bench: str, reason: str, metrics: list[str] = ()) -> int:
    """Record a benchmark that cannot run here (no CUDA, a missing package) and exit 0."""
    rows = [skipped_row(m, reason) for m in metrics] or [skipped_row(bench, reason)]
    _save(args, {"bench": bench, "name": args.name, "status": "skipped", "reason": reason, "rows": rows})
    return 0


def cuda_or_skip(args: argparse.Namespace, bench: str, metrics: list[str] = ()) -> bool:
    """False (and the skip written) when `--device cuda` was asked for on a machine without it."""
    import torch

    if getattr(args, "device", "cpu") == "cuda" and not torch.cuda.is_available():
        skip(args, bench, "needs CUDA: no GPU here", metrics)
        return False
    return True


def missing(*modules: str) -> str | None:
    """The first of `modules` that cannot be imported, as a skip reason; None when all can."""
    import importlib.util

    for module in modules:
        if importlib.util.find_spec(module) is None:
            return f"needs {module}, not installed in this Python"
    return None


def _save(args: argparse.Namespace, result: dict) -> None:
    result["wall_seconds"] = round(time.perf_counter() - STARTED, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result), flush=True)


def hornet_jpegs(root: Path, images: int, size: int) -> Path:
    """`images` generated JPEGs of `size` px in an ImageFolder layout (absence/, presence/), the demo's
    hornet scenes at the course's ratio of the two classes."""
    from frelon.data.demo import generate_hornet

    generate_hornet(root / "raw", images * 36 // 100, images - images * 36 // 100, size=size, seed=0)
    return root / "raw"


def prepared_hornet(raw: Path, out: Path, image_size: int, held_out: float = 0.05) -> Path:
    """`raw` through frelon's own prepare step (what `frelon prepare`, the `prepare_dataset` rule, runs)."""
    from frelon.data.folder import prepare

    prepare(raw, ["absence", "presence"], held_out, held_out, image_size, 0, out)
    return out


def prepared_coco(root: Path, train: int, val: int, size: int) -> Path:
    """Generated COCO 2017 zips (the demo's and tests' writer; images `size` to 1.5 x `size` wide),
    extracted in the official layout and prepared by `frelon prepare-coco`'s function."""
    from frelon.data import archives, coco
    from frelon.data.demo_detection import write_coco_archives

    (root / "coco").mkdir(parents=True)
    for name, path in write_coco_archives(root / "archives", train=train, val=val, size=size).items():
        archives.extract(path, root / "parts" / name)
        for item in (root / "parts" / name).iterdir():  # each zip holds one top folder
            item.replace(root / "coco" / item.name)
    coco.prepare(root / "coco", root / "prepared")
    return root / "prepared"


def demo_spec(task: str) -> dict:
    """A spec resolved from config/demo.yaml: the finetune study's random-init run, or a COCO detection
    run; callers override data, model and train. Looked up by name, so new seeds or runs do not break it."""
    import yaml

    from frelon import spec as frelon_spec

    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    study, part = ("finetune", "/random") if task == "classification" else ("detection", "coco")
    run = next(r for r in frelon_spec.all_runs(config, study) if part in r)
    return frelon_spec.resolve(config, run)


def sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
