"""Aggregate the runs of a study into a table; every cell comes from a run's own files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from frelon.atomic import write_json, write_text

METRIC_COLUMNS = ["test_accuracy", "test_balanced_accuracy"]


def _row(metrics_path: Path) -> dict:
    metrics = json.loads(metrics_path.read_text())
    spec = json.loads((metrics_path.parent / "spec.json").read_text())
    train = spec["train"]
    return {
        "experiment": spec["experiment"].split("/", 1)[1],
        "arch": spec["model"]["arch"],
        "init": spec["model"]["weights"] or "random",
        "epochs": train["epochs"],
        "world_size": train["world_size"],
        "global_batch": train["global_batch"],
        "lr": train["lr"],
        "n_test": metrics["n"],
        "test_accuracy": round(metrics["accuracy"], 4),
        "test_balanced_accuracy": round(metrics["balanced_accuracy"], 4),
        "train_seconds": round(metrics["train_seconds"], 1),
    }


def study_table(metrics_files: list[str | os.PathLike]) -> pd.DataFrame:
    """One row per run, from each run's metrics.json and the spec.json beside it."""
    return pd.DataFrame([_row(Path(p)) for p in metrics_files])


def write_table(table: pd.DataFrame, csv_path: str | os.PathLike, md_path: str | os.PathLike) -> None:
    write_text(csv_path, table.to_csv(index=False))
    write_text(md_path, table.to_markdown(index=False) + "\n")


def write_metrics(tables: dict[str, str | os.PathLike], out: str | os.PathLike) -> dict:
    """`{study: {experiment: {metric: value}}}` from the study tables, for `dvc metrics show`."""
    summary = {}
    for study, path in tables.items():
        table = pd.read_csv(path)
        summary[study] = {row.experiment: {m: float(getattr(row, m)) for m in METRIC_COLUMNS}
                          for row in table.itertuples()}
    write_json(out, summary)
    return summary
