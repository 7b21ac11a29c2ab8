"""Aggregate the runs of a study into a table; every cell comes from a run's own files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from frelon.atomic import write_json, write_text

METRIC_COLUMNS = ["test_accuracy", "test_balanced_accuracy"]
# What sets the work of an epoch: runs alike in these differ only in how many processes share it.
WORK_COLUMNS = ["arch", "norm", "residual", "init", "batch_size", "augmented"]


def _score(value: float | None) -> float | None:
    """A rounded score; None (an empty cell) for a run that diverged and was not scored."""
    return None if value is None else round(value, 4)


def _row(metrics_path: Path) -> dict:
    metrics = json.loads(metrics_path.read_text())
    spec = json.loads((metrics_path.parent / "spec.json").read_text())
    history = pd.read_csv(metrics_path.parent / "history.csv")
    train = spec["train"]
    return {
        "experiment": spec["experiment"].split("/", 1)[1],
        "arch": spec["model"]["arch"],
        "norm": spec["model"]["norm"],
        "residual": spec["model"]["residual"],
        "init": spec["model"]["weights"] or "random",
        "trained": "head" if spec["model"]["head_only"] else "all",
        "augmented": spec["data"]["augmented"],
        "epochs": train["epochs"],
        "world_size": train["world_size"],
        "batch_size": train["batch_size"],
        "global_batch": train["global_batch"],
        "lr_scaling": train["lr_scaling"],
        "lr": train["lr"],
        "warmup_epochs": train["lr_schedule"].get("warmup_epochs", 0),
        "n_test": metrics.get("n"),
        **{column: _score(metrics[column.removeprefix("test_")]) for column in METRIC_COLUMNS},
        "diverged_at_step": (metrics.get("diverged") or {}).get("step"),
        "epoch_seconds": round(float(history.epoch_seconds.median()), 2),
        "images_per_second": round(float(history.images_per_second.median()), 1),
        "train_seconds": round(metrics["train_seconds"], 1),
    }


def add_scaling(table: pd.DataFrame) -> pd.DataFrame:
    """Speed-up (time per epoch on one process / time per epoch) and efficiency (speed-up / world
    size), against the world-size-1 runs of the same work; columns only in a study of several world
    sizes that has such runs."""
    single = table[table.world_size == 1]
    if single.empty or table.world_size.nunique() == 1:
        return table
    baseline = single.groupby(WORK_COLUMNS).epoch_seconds.median()
    base = baseline.reindex(pd.MultiIndex.from_frame(table[WORK_COLUMNS])).to_numpy()
    table = table.copy()
    table["speedup"] = (base / table.epoch_seconds).round(3)
    table["efficiency"] = (table.speedup / table.world_size).round(3)
    return table


def study_table(metrics_files: list[str | os.PathLike]) -> pd.DataFrame:
    """One row per run, from each run's metrics.json and the spec.json and history.csv beside it."""
    table = pd.DataFrame([_row(Path(p)) for p in metrics_files])
    table = table.astype({"n_test": "Int64", "diverged_at_step": "Int64"})  # counts, empty where absent
    return add_scaling(table)


def write_table(table: pd.DataFrame, csv_path: str | os.PathLike, md_path: str | os.PathLike) -> None:
    write_text(csv_path, table.to_csv(index=False))
    cells = table.astype(object).where(table.notna(), None)  # an empty cell, not "nan" or "<NA>"
    write_text(md_path, cells.to_markdown(index=False, missingval="") + "\n")


def write_metrics(tables: dict[str, str | os.PathLike], out: str | os.PathLike) -> dict:
    """`{study: {experiment: {metric: value}}}` from the study tables, for `dvc metrics show`."""
    summary = {}
    for study, path in tables.items():
        table = pd.read_csv(path)
        summary[study] = {row.experiment: {m: float(getattr(row, m)) for m in METRIC_COLUMNS
                                           if pd.notna(getattr(row, m))}
                          for row in table.itertuples()}
    write_json(out, summary)
    return summary
