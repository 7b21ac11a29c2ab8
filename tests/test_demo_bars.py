"""tools/demo_bars.py, the check CI runs on the full demo's tables: every detection row at AP50 >= 0.85."""

import json
import subprocess
import sys

import pandas as pd

from conftest import REPO


def bars(results):
    return subprocess.run([sys.executable, str(REPO / "tools" / "demo_bars.py"), str(results)],
                          capture_output=True, text=True)


def write(results, ap50):
    (results / "tables").mkdir(parents=True)
    pd.DataFrame({"experiment": list(ap50), "dataset": ["voc", "coco"], "AP50": list(ap50.values())}).to_csv(
        results / "tables" / "detection.csv", index=False)
    run = results / "runs" / "detection" / "voc-unet"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"AP50": ap50["voc-unet"], "precision": "bf16"}))


def test_every_row_at_the_bar_passes_and_says_each_rows_precision(tmp_path):
    write(tmp_path, {"voc-unet": 0.85, "coco-unet": 0.9})
    done = bars(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "voc-unet       voc            AP50 0.850 (bf16) ok" in done.stdout
    assert "coco-unet      coco           AP50 0.900 (?) ok" in done.stdout


def test_a_row_below_the_bar_or_not_scored_fails_and_is_named(tmp_path):
    write(tmp_path, {"voc-unet": 0.8499, "coco-unet": float("nan")})
    done = bars(tmp_path)
    assert done.returncode == 1
    assert "below the demo's bar of AP50 0.85: voc-unet (0.8499), coco-unet (nan)" in done.stderr


def test_without_the_demos_tables_it_says_to_run_the_demo(tmp_path):
    done = bars(tmp_path)
    assert done.returncode == 1 and "detection.csv is missing: run `make demo` first" in done.stderr
