"""Aggregate the runs of a study into a table; every cell comes from a run's own files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from frelon.atomic import write_json, write_text
from frelon.models.resnet import WIDTH

METRIC_COLUMNS = ["test_accuracy", "test_balanced_accuracy"]
# pycocotools' AP (IoU 0.5:0.95), AP50, AP75, by size, and for VOC the 11-point VOC07 AP50 of the CenterNet paper
DETECTION_COLUMNS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AP50_voc07"]
HEADLINE_COLUMNS = METRIC_COLUMNS + ["AP", "AP50", "AP50_voc07"]  # for `dvc metrics show`
TIMING_COLUMNS = ["epoch_seconds", "images_per_second", "data_wait_fraction", "train_seconds", "speedup",
                  "efficiency"]
# The timings a timed study's report shows (the others are in its CSV)
REPORT_TIMINGS = ["epoch_seconds", "images_per_second", "speedup", "efficiency"]
# What sets the work of an epoch: runs alike in these differ only in how many processes share it.
WORK_COLUMNS = ["arch", "norm", "residual", "init", "batch_size", "augmented", "augment"]


def _score(value: float | None) -> float | None:
    """A rounded score; None (an empty cell) for a run that diverged and was not scored."""
    return None if value is None else round(value, 4)


def _timing(metrics: dict, history: pd.DataFrame) -> dict:
    return {
        "diverged_at_step": (metrics.get("diverged") or {}).get("step"),
        "epoch_seconds": round(float(history.epoch_seconds.median()), 2),
        "images_per_second": round(float(history.images_per_second.median()), 1),
        # the share of the epochs spent waiting for the loader (empty for runs recorded before it was kept)
        "data_wait_fraction": (round(float(history.data_wait_fraction.median()), 3)
                               if "data_wait_fraction" in history else None),
        "train_seconds": round(metrics["train_seconds"], 1),
    }


def _detection_row(spec: dict, metrics: dict) -> dict:
    train, detection = spec["train"], spec["detection"]
    return {
        "experiment": spec["experiment"].split("/", 1)[1],
        "dataset": spec["data"]["kind"],
        "decoder": spec["model"]["decoder"],
        "arch": spec["model"]["arch"],
        "width": spec["model"].get("width", WIDTH),
        "init": spec["model"]["weights"] or "random",
        "input_size": detection["input_size"],
        "test_resolution": detection.get("test_resolution", "letterbox"),
        "flip_test": detection["flip_test"],
        "epochs": train["epochs"],
        "world_size": train["world_size"],
        "global_batch": train["global_batch"],
        "lr": train["lr"],
        "n_val": metrics.get("n"),
        # pycocotools gives -1 where no object falls in a size range: nothing measured, an empty cell
        **{column: _score(metrics[column] if metrics.get(column, -1) >= 0 else None) for column in DETECTION_COLUMNS},
    }


def _predicted_classes(metrics: dict) -> int | None:
    """How many classes a classifier predicted at least once on its test images: the confusion matrix's
    non-empty columns (rows: true class, columns: predicted); None where the run recorded no matrix."""
    confusion = metrics.get("confusion")
    if not confusion:
        return None
    return sum(1 for column in zip(*confusion) if any(column))


def _missing_row(run: Path) -> dict:
    """A run with no metrics.json: named from its spec (or folder), every measured cell empty."""
    spec_path = run / "spec.json"
    if spec_path.exists():
        spec = json.loads(spec_path.read_text())
        experiment, seed = spec["experiment"].split("/", 1)[1], spec.get("seed")
    else:  # results/runs/<study>/<experiment>[/seed<N>]
        seeded = run.name.startswith("seed") and run.name[4:].isdigit()
        experiment, seed = (run.parent.name, int(run.name[4:])) if seeded else (run.name, None)
    return {"experiment": experiment, "seed": seed, "status": "missing"}


def _row(run: Path) -> dict:
    """One run's row from its metrics.json, spec.json and history.csv; a row marked missing without them."""
    if not (run / "metrics.json").exists():
        return _missing_row(run)
    metrics = json.loads((run / "metrics.json").read_text())
    spec = json.loads((run / "spec.json").read_text())
    history = pd.read_csv(run / "history.csv")
    status = {"seed": spec.get("seed"), "status": "diverged" if metrics.get("diverged") else "scored"}
    if spec.get("task") == "detection":
        row = _detection_row(spec, metrics)
        return {"experiment": row.pop("experiment"), **status, **row, **_timing(metrics, history)}
    train = spec["train"]
    return {
        "experiment": spec["experiment"].split("/", 1)[1],
        **status,
        "arch": spec["model"]["arch"],
        "width": spec["model"].get("width", WIDTH),
        "norm": spec["model"]["norm"],
        "residual": spec["model"]["residual"],
        "init": spec["model"]["weights"] or "random",
        "trained": "head" if spec["model"]["head_only"] else "all",
        "augmented": spec["data"]["augmented"],
        "augment": "+".join(spec["data"].get("augment", ["mirror"])) or "none",
        "epochs": train["epochs"],
        "world_size": train["world_size"],
        "batch_size": train["batch_size"],
        "global_batch": train["global_batch"],
        "lr_scaling": train["lr_scaling"],
        "lr": train["lr"],
        "warmup_epochs": train["lr_schedule"].get("warmup_epochs", 0),
        "n_test": metrics.get("n"),
        **{column: _score(metrics.get(column.removeprefix("test_"))) for column in METRIC_COLUMNS},
        "predicted_classes": _predicted_classes(metrics),
        **_timing(metrics, history),
    }


def add_scaling(table: pd.DataFrame) -> pd.DataFrame:
    """Speed-up (time per epoch on one process / time per epoch) and efficiency (speed-up / world
    size), against the world-size-1 runs of the same work; columns only in a study of several world
    sizes that has such runs."""
    if not set(WORK_COLUMNS) <= set(table):  # detection: no scaling study
        return table
    single = table[(table.world_size == 1) & table.epoch_seconds.notna()]
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


def _run_folder(path: str | os.PathLike) -> Path:
    """A run folder, given as the folder or as its metrics.json."""
    path = Path(path)
    return path.parent if path.name == "metrics.json" else path


def run_table(runs: list[str | os.PathLike], references: dict[str, dict] | None = None) -> pd.DataFrame:
    """One row per run (per seed), from each run's metrics.json and the spec.json and history.csv beside
    it; a run without metrics.json is a row marked `missing`, its measured cells empty."""
    table = pd.DataFrame([_row(_run_folder(p)) for p in runs])
    counts = {c: "Int64" for c in ("seed", "n_test", "n_val", "diverged_at_step", "predicted_classes") if c in table}
    table = table.astype(counts)  # counts, empty where absent
    return add_references(add_scaling(table) if "epoch_seconds" in table else table, references or {})


def measured_columns(table: pd.DataFrame) -> list[str]:
    """The columns a seed changes: scores and timings (averaged over seeds, with their spread)."""
    return [c for c in [*METRIC_COLUMNS, *DETECTION_COLUMNS, *TIMING_COLUMNS] if c in table]


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment (in the order of first appearance): its settings, `runs` (how many),
    `n` (scored: neither diverged nor missing), `diverged`, `missing`, and for each measured column the
    mean over the runs that have it and `<column>_std` (sample standard deviation; empty below 2)."""
    measured = measured_columns(runs)
    per_run = {"seed", "status", "diverged_at_step", "predicted_classes", *measured}
    rows = []
    for experiment, group in runs.groupby("experiment", sort=False):
        present = group[group.status != "missing"]
        settings = present.iloc[0] if len(present) else group.iloc[0]
        row = {c: settings.get(c) for c in runs.columns if c not in per_run}
        row.update(runs=len(group), n=int((group.status == "scored").sum()),
                   diverged=int((group.status == "diverged").sum()), missing=int((group.status == "missing").sum()))
        for column in measured:
            values = pd.to_numeric(group[column], errors="coerce").dropna()
            row[column] = values.mean() if len(values) else None
            row[f"{column}_std"] = values.std(ddof=1) if len(values) > 1 else None
        rows.append(row)
    table = pd.DataFrame(rows)
    digits = {c: (4 if c in METRIC_COLUMNS + DETECTION_COLUMNS else 3) for c in measured}
    for column, d in digits.items():
        table[column] = pd.to_numeric(table[column]).round(d)
        table[f"{column}_std"] = pd.to_numeric(table[f"{column}_std"]).round(d)
    return table


def study_table(runs: list[str | os.PathLike], references: dict[str, dict] | None = None) -> pd.DataFrame:
    """The study's table: one row per experiment, mean and spread over its seeds (see `aggregate`)."""
    return aggregate(run_table(runs, references))


def _cells(table: pd.DataFrame) -> pd.DataFrame:
    """The table as people read it: `mean ± std` in one cell, empty cells for what was not measured."""
    shown = pd.DataFrame({c: [None if pd.isna(v) else v for v in table[c]] for c in table.columns}, dtype=object)
    for column in measured_columns(table):
        std = f"{column}_std"
        if std in table:
            shown[column] = pd.Series([None if pd.isna(m) else (f"{m:g}" if pd.isna(s) else f"{m:g} ± {s:g}")
                                       for m, s in zip(table[column], table[std])], index=shown.index, dtype=object)
            shown = shown.drop(columns=std)
    return shown


def _latex(cells: pd.DataFrame) -> str:
    """A booktabs tabular of the table's cells (no jinja2 needed)."""
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$", "{": r"\{",
               "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$"}

    def tex(value) -> str:
        return "".join(special.get(char, char) for char in ("" if value is None else str(value)))

    lines = [r"\begin{tabular}{" + "l" * len(cells.columns) + "}", r"\toprule",
             " & ".join(tex(c) for c in cells.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(tex(v) for v in row) + r" \\" for row in cells.itertuples(index=False)]
    return "\n".join([*lines, r"\bottomrule", r"\end{tabular}", ""])


def write_table(table: pd.DataFrame, csv_path: str | os.PathLike, md_path: str | os.PathLike,
                tex_path: str | os.PathLike | None = None) -> None:
    """CSV (every column, std apart), Markdown and LaTeX (`mean ± std` cells, empty where not measured)."""
    write_text(csv_path, table.to_csv(index=False))
    cells = _cells(table)
    write_text(md_path, cells.to_markdown(index=False, missingval="") + "\n")
    if tex_path is not None:
        write_text(tex_path, _latex(cells))


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


def collapsed(runs: pd.DataFrame) -> pd.Series:
    """Per run of a runs table: whether it collapsed to one class, every test prediction the same class (its
    confusion matrix has one non-empty column; where the table has no such count, a balanced accuracy of
    0.5, two classes' chance with one class always predicted). False for a run that was not scored."""
    def numbers(column: str) -> pd.Series:
        return pd.to_numeric(runs[column], errors="coerce") if column in runs else pd.Series(float("nan"), runs.index)

    predicted, balanced = numbers("predicted_classes"), numbers("test_balanced_accuracy")
    one = (predicted == 1).where(predicted.notna(), balanced == 0.5)
    scored = runs.status == "scored" if "status" in runs else balanced.notna()
    return one.fillna(False).astype(bool) & scored


def collapsed_counts(runs: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """{experiment: (its runs that collapsed to one class, its runs scored)}, for the experiments with one."""
    if runs.empty:
        return {}
    scored = runs.status == "scored" if "status" in runs else pd.Series(True, runs.index)
    one = collapsed(runs)
    return {experiment: (int(one[group.index].sum()), int(scored[group.index].sum()))
            for experiment, group in runs.groupby("experiment", sort=False) if one[group.index].any()}


def significant(value, digits: int = 3) -> str:
    """A number for people: `digits` significant digits; whole numbers (counts, sizes) and the whole part of
    larger numbers in full, never in exponent notation; text as it is; "" for nothing."""
    if value is None or isinstance(value, str):
        return value or ""
    if pd.isna(value):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    number = float(value)
    if number.is_integer():
        return str(int(number))
    if abs(number) >= 10 ** (digits - 1):
        return f"{number:.0f}"
    return f"{number:.{digits}g}"


def _varies(column: pd.Series) -> bool:
    return column.astype(str).where(column.notna(), "").nunique() > 1


def compact(table: pd.DataFrame, identity: Sequence[str] = ("experiment",), scores: Sequence[str] | None = None,
            timings: bool = False, one_class: dict[str, tuple[int, int]] | None = None) -> str:
    """A table as the report shows it, in Markdown: the first `identity` column (and the others where they
    vary), the settings that vary between rows, then the scores (`mean ± std` where the table has the std),
    every number at 3 significant digits. What is the same in every row follows the table in one line,
    what is empty in every row in another. `scores`: by default a study table's metrics, and with `timings`
    (a timed study) REPORT_TIMINGS. `one_class`: {row's first identity value: (runs that predicted one
    class, runs scored)}, shown in a column `one class` when any. The CSV keeps every column; this leaves
    out the other timings only (an untimed study's are noise from the jobs beside them)."""
    identity = [c for c in identity if c in table]
    if scores is None:
        scores = [c for c in measured_columns(table) if c not in TIMING_COLUMNS or (timings and c in REPORT_TIMINGS)]
    hidden = {f"{c}_std" for c in table.columns} | set(measured_columns(table))
    scores = [c for c in scores if c in table]
    first = identity[:1] + [c for c in identity[1:] if _varies(table[c])]
    settings = [c for c in table.columns if c not in identity and c not in scores and c not in hidden]
    same = [c for c in identity[1:] + settings if not _varies(table[c]) and table[c].notna().any()]
    empty = [c for c in settings + scores if table[c].isna().all()]
    shown_settings = [c for c in settings if _varies(table[c])]
    references = [c for c in shown_settings if c.startswith("reference_")]
    shown_settings = [c for c in shown_settings if c not in references]
    shown_scores = [c for c in scores if c not in empty]

    cells = {c: [significant(v) for v in table[c]] for c in first + shown_settings}
    if one_class:
        cells["one class"] = [f"{one_class[k][0]} of {one_class[k][1]} runs" if k in one_class else ""
                              for k in table[identity[0]]]
    for column in shown_scores:
        std = table[f"{column}_std"] if f"{column}_std" in table else pd.Series(float("nan"), table.index)
        cells[column] = ["" if pd.isna(m) else significant(m) + ("" if pd.isna(s) else f" ± {significant(s)}")
                         for m, s in zip(table[column], std)]
    for column in references:
        cells[column] = [significant(v) for v in table[column]]
    shown = pd.DataFrame(cells, dtype=object)
    numeric = [c for c in shown.columns if c in table and pd.api.types.is_numeric_dtype(table[c])
               and not pd.api.types.is_bool_dtype(table[c])]
    align = ["right" if c in numeric else "left" for c in shown.columns]
    lines = [shown.to_markdown(index=False, disable_numparse=True, colalign=align)]
    if same:
        lines += ["", "Same in every row: " + ", ".join(f"{c} {significant(table[c].dropna().iloc[0])}" for c in same)
                  + "."]
    if empty:
        lines += ["", "Empty in every row (not measured): " + ", ".join(empty) + "."]
    return "\n".join(lines) + "\n"
