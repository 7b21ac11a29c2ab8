"""Pipeline overhead: what Snakemake costs before and around the work.

    python bench/pipeline_overhead.py
    python bench/pipeline_overhead.py --demo-dir /path/to/a/checkout/with/a/finished/demo

1. `snakemake -n --configfile config/config.yaml` in the repository, as a user types it. Without the
   course's data (datasets.hornet.source) it stops at that check; the time to that stop is reported.
2. The same dry run in a scratch working directory where that folder exists (one stub image per
   class), so that it builds the whole DAG of the course study (the jobs are counted).
3. A no-op rerun of the demo: `snakemake --cores all --configfile config/demo.yaml` where a finished
   demo is (`results/report.md`), which must find nothing to do. Skipped where there is none: the
   benchmark never runs the demo itself (`make demo`, about 9 minutes on 2 cores).
Each command runs `--repeat` times; the fastest is reported (start-up of Python and Snakemake included).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def timed(command: list[str], cwd: Path, repeat: int) -> tuple[float, subprocess.CompletedProcess]:
    best, done = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
        best = min(best, time.perf_counter() - start)
    return best, done


def last_error(done: subprocess.CompletedProcess) -> str:
    """The first `SomeError: message` line of the output (Snakemake prints a bare "Error:" above it)."""
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return next((line for line in lines if re.search(r"\w*Error: \S", line)), lines[-1] if lines else "")[:200]


def jobs(done: subprocess.CompletedProcess) -> int | None:
    """The `total N` line of Snakemake's job table."""
    for line in (done.stdout + done.stderr).splitlines():
        if line.split()[:1] == ["total"] and line.split()[-1].isdigit():
            return int(line.split()[-1])
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-dir", type=Path, default=common.REPO, help="where a finished demo is")
    parser.add_argument("--repeat", type=int, default=2)
    common.arguments(parser, "pipeline_overhead")
    args = parser.parse_args()
    metrics = ["snakemake -n (config.yaml)", "snakemake -n (config.yaml, DAG built)", "demo no-op rerun"]
    if reason := common.missing("snakemake"):
        return common.skip(args, "pipeline_overhead", reason, metrics)
    repo, config = common.REPO, str(common.REPO / "config" / "config.yaml")
    rows, details = [], {}

    seconds, done = timed([*SNAKEMAKE, "-n", "--configfile", config], repo, args.repeat)
    error = last_error(done) if done.returncode else ""
    key = re.search(r"config key ([\w.]+)", error)  # frelon's check of a folder the user supplies
    stopped = "" if not error else f", stops at the check of {key[1]}" if key else f", stops: {error[:60]}"
    rows.append(common.row(metrics[0] + stopped, round(seconds, 2), "s"))
    details["dry_run"] = {"exit": done.returncode, "jobs": jobs(done), "error": error or None}

    with tempfile.TemporaryDirectory() as tmp:
        from PIL import Image

        for name in ("absence", "presence"):  # the course config's datasets.hornet (source: raw/hornet)
            (Path(tmp) / "raw" / "hornet" / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(Path(tmp) / "raw" / "hornet" / name / "stub.jpg")
        traps = Path(tmp) / "raw" / "hornet_traps"  # and its detection_data.hornet_traps (a YOLO export)
        for folder in ("images/train", "labels/train"):
            (traps / folder).mkdir(parents=True)
        (traps / "data.yaml").write_text("train: images/train\nval: images/train\nnames: [velutina, crabro]\n")
        seconds, done = timed([*SNAKEMAKE, "-n", "-s", str(repo / "Snakefile"), "-d", tmp, "--configfile", config],
                              repo, args.repeat)
    if done.returncode == 0:
        rows.append(common.row(f"{metrics[1]}, {jobs(done)} jobs", round(seconds, 2), "s"))
    else:
        rows.append(common.row(metrics[1], f"failed: {last_error(done)}", status="fail"))
    details["dag_dry_run"] = {"exit": done.returncode, "jobs": jobs(done)}

    demo = args.demo_dir.resolve()
    if not (demo / "results" / "report.md").exists():
        rows.append(common.skipped_row(metrics[2], f"no finished demo in {demo}: run make demo first"))
    else:
        seconds, done = timed([*SNAKEMAKE, "--cores", "all", "--configfile", "config/demo.yaml"], demo, args.repeat)
        idle = done.returncode == 0 and "Nothing to be done" in done.stdout + done.stderr
        rows.append(common.row(metrics[2], round(seconds, 2) if idle else f"not a no-op: {last_error(done)}",
                               "s", "nothing to do", idle))
        details["demo_rerun"] = {"exit": done.returncode, "dir": str(demo)}
    common.write(args, "pipeline_overhead", rows, **details)
    return 0


if __name__ == "__main__":
    sys.exit(main())
