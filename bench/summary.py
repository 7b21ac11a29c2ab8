"""Gather the benchmarks' result files into one table: printed, and as summary.json and summary.md.

    python bench/summary.py                       # bench/out/*.json
    python bench/summary.py --out /tmp/gpu --command "bash bench/gpu.sh"

Each row: benchmark, metric, value (unit), target, and pass / fail / reference / info / skipped.
Exit status 0 whatever the targets say (the table says it); 1 only when there is nothing to gather.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import common

ORDER = ["engine_classification", "engine_detection", "input_pipeline", "checkpointing", "checkpointing_profile",
         "gpu_throughput", "centernet", "coco_eval", "pipeline_overhead", "exactness"]


def gather(out: Path) -> list[dict]:
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.name != "summary.json"]
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(results, key=lambda r: (rank.get(r["name"], len(ORDER)), r["name"]))


def value_text(row: dict) -> str:
    """The value with its unit; a skip's or failure's reason as it is."""
    if row["status"] in ("skipped", "fail") and isinstance(row["value"], str):
        return row["value"]
    return f"{row['value']} {row['unit'] or ''}".strip()


def table(rows: list[list[str]], markdown: bool) -> str:
    header = ["benchmark", "metric", "value", "target", "status"]
    if markdown:
        return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |"
                         for line in [header, ["---"] * len(header), *rows])
    caps = [22, 72, 60, 8, 9]  # a terminal's width; summary.md has every cell in full
    widths = [min(max(len(line[i]) for line in [header, *rows]), cap) for i, cap in enumerate(caps)]
    return "\n".join("  ".join(cell[:w].ljust(w) for cell, w in zip(line, widths)).rstrip()
                     for line in [header, ["-" * w for w in widths], *rows])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(common.REPO / "bench" / "out"))
    parser.add_argument("--command", default="make bench", help="what produced the results, for summary.md")
    args = parser.parse_args()
    out = Path(args.out)
    results = gather(out)
    if not results:
        print(f"no benchmark results in {out}", file=sys.stderr)
        return 1
    lines = [[r["name"], row["metric"], value_text(row), row["target"] or "", row["status"]]
             for r in results for row in r["rows"]]
    machine = next((r["machine"] for r in results if "machine" in r), {})
    where = ", ".join(f"{k} {v}" for k, v in machine.items())
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    counts = {s: sum(line[4] == s for line in lines) for s in ("pass", "fail", "skipped")}
    tally = ", ".join(f"{n} {s}" for s, n in counts.items())
    print(f"\nBenchmarks ({args.command}; {date}; {where}): {tally}\n")
    print(table(lines, markdown=False))
    print("\nwall time: " + ", ".join(f"{r['name']} {r['wall_seconds']:.0f} s" for r in results if "wall_seconds" in r))
    (out / "summary.json").write_text(json.dumps({"command": args.command, "date": date, "machine": machine,
                                                  "counts": counts, "rows": [dict(zip(
                                                      ["benchmark", "metric", "value", "target", "status"], line))
                                                      for line in lines]}, indent=1) + "\n")
    (out / "summary.md").write_text(f"`{args.command}`, {date}, {where}: {tally}\n\n{table(lines, markdown=True)}\n")
    print(f"\n{out}/summary.md, summary.json and one <benchmark>.json each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
