"""Aggregate the runs of a study into a table; every cell comes from a run's own files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from frelon.atomic import write_json, write_text

METRIC_COLUMNS = ["test_accuracy", "test_balanced_accuracy"]
# pycocotools' AP (IoU 0.5:0.95), AP50, AP75, by size, and for VOC the 11-point VOC07 AP50 of the CenterNet paper
DETECTION_COLUMNS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AP50_voc07"]
HEADLINE_COLUMNS = METRIC_COLUMNS + ["AP", "AP50", "AP50_voc07"]  # for `dvc metrics show`
# What sets the work of an epoch: runs alike in these differ only in how many processes share it.
WORK_COLUMNS = ["arch", "norm", "residual", "init", "batch_size", "augmented"]


def _score(value: float | None) -> float | None:
    """A rounded score; None (an empty cell) for a run that diverged and was not scored."""
    return None if value is None else round(value, 4)


def _timing(metrics: dict, history: pd.DataFrame) -> dict:
    return {
        "diverged_at_step": (metrics.get("diverged") or {}).get("step"),
        "epoch_seconds": round(float(history.epoch_seconds.median()), 2),
        "images_per_second": round(float(history.images_per_second.median()), 1),
        "train_seconds": round(metrics["train_seconds"], 1),
    }


def _detection_row(spec: dict, metrics: dict) -> dict:
    train, detection = spec["train"], spec["detection"]
    return {
        "experiment": spec["experiment"].split("/", 1)[1],
        "dataset": spec["data"]["kind"],
        "decoder": spec["model"]["decoder"],
        "arch": spec["model"]["arch"],
        "init": spec["model"]["weights"] or "random",
        "input_size": detection["input_size"],
        "flip_test": detection["flip_test"],
        "epochs": train["epochs"],
        "world_size": train["world_size"],
        "global_batch": train["global_batch"],
        "lr": train["lr"],
        "n_val": metrics.get("n"),
        # pycocotools gives -1 where no object falls in a size range: nothing measured, an empty cell
        **{column: _score(metrics[column] if metrics.get(column, -1) >= 0 else None) for column in DETECTION_COLUMNS},
    }


def _row(metrics_path: Path) -> dict:
    metrics = json.loads(metrics_path.read_text())
    spec = json.loads((metrics_path.parent / "spec.json").read_text())
    history = pd.read_csv(metrics_path.parent / "history.csv")
    if spec.get("task") == "detection":
        return {**_detection_row(spec, metrics), **_timing(metrics, history)}
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
        **{column: _score(metrics.get(column.removeprefix("test_"))) for column in METRIC_COLUMNS},
        **_timing(metrics, history),
    }


def add_scaling(table: pd.DataFrame) -> pd.DataFrame:
    """Speed-up (time per epoch on one process / time per epoch) and efficiency (speed-up / world
    size), against the world-size-1 runs of the same work; columns only in a study of several world
    sizes that has such runs."""
    if not set(WORK_COLUMNS) <= set(table):  # detection: no scaling study
        return table
    single = table[table.world_size == 1]
    if single.empty or table.world_size.nunique() == 1:
        return table
    baseline = single.groupby(WORK_COLUMNS).epoch_seconds.median()
    base = baseline.reindex(pd.MultiIndex.from_frame(table[WORK_COLUMNS])).to_numpy()
    table = table.copy()
    table["speedup"] = (base / table.epoch_seconds).round(3)
    table["efficiency"] = (table.speedup / table.world_size).round(3)
    return table


def add_references(table: pd.DataFrame, references: dict[str, dict]) -> pd.DataFrame:
    """Published numbers beside the measured ones, by experiment: `reference` (its value), the metric it
    is in and its source; empty for experiments without one. They are labelled, never measured here."""
    if not references:
        return table
    table = table.copy()
    for key in ("value", "metric", "source"):
        table[f"reference_{key}"] = [references.get(e, {}).get(key) for e in table.experiment]
    return table


def study_table(metrics_files: list[str | os.PathLike], references: dict[str, dict] | None = None) -> pd.DataFrame:
    """One row per run, from each run's metrics.json and the spec.json and history.csv beside it."""
    table = pd.DataFrame([_row(Path(p)) for p in metrics_files])
    counts = {c: "Int64" for c in ("n_test", "n_val", "diverged_at_step") if c in table}
    table = table.astype(counts)  # counts, empty where absent
    return add_references(add_scaling(table), references or {})


def write_table(table: pd.DataFrame, csv_path: str | os.PathLike, md_path: str | os.PathLike) -> None:
    write_text(csv_path, table.to_csv(index=False))
    cells = table.astype(object).where(table.notna(), None)  # an empty cell, not "nan" or "<NA>"
    write_text(md_path, cells.to_markdown(index=False, missingval="") + "\n")


def write_metrics(tables: dict[str, str | os.PathLike], out: str | os.PathLike) -> dict:
    """`{study: {experiment: {metric: value}}}` from the study tables, for `dvc metrics show`."""
    summary = {}
    for study, path in tables.items():
        table = pd.read_csv(path)
        columns = [m for m in HEADLINE_COLUMNS if m in table]
        summary[study] = {row.experiment: {m: float(getattr(row, m)) for m in columns if pd.notna(getattr(row, m))}
                          for row in table.itertuples()}
    write_json(out, summary)
    return summary
