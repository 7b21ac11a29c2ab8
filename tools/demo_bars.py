"""The embedded demo's bar, checked on the tables `make demo` wrote: every detection row at AP50 >= 0.85
(pycocotools, IoU 0.5). CI runs the whole demo after the tests (which train a shortened copy of it) and
this check after it.

    python tools/demo_bars.py [RESULTS]     # RESULTS: the demo's results folder (default: results)

Prints the rows with the precision the runs trained in; exits 1 naming each row below the bar, or the
table that is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

AP50_BAR = 0.85


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", default="results", type=Path)
    results = parser.parse_args(argv).results
    table_path = results / "tables" / "detection.csv"
    if not table_path.is_file():
        print(f"{table_path} is missing: run `make demo` first", file=sys.stderr)
        return 1
    table = pd.read_csv(table_path).set_index("experiment")
    below = []
    for name, row in table.iterrows():
        metrics = results / "runs" / "detection" / name / "metrics.json"
        precision = json.loads(metrics.read_text()).get("precision", "?") if metrics.is_file() else "?"
        ok = pd.notna(row.AP50) and row.AP50 >= AP50_BAR
        print(f"{name:14s} {row.dataset:14s} AP50 {row.AP50:.3f} ({precision}) {'ok' if ok else 'BELOW'}")
        if not ok:
            below.append(f"{name} ({row.AP50})")
    if below:
        print(f"below the demo's bar of AP50 {AP50_BAR}: {', '.join(below)}", file=sys.stderr)
        return 1
    print(f"every detection row at AP50 >= {AP50_BAR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
