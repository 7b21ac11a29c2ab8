"""The course's claims, checked against the tables the pipeline computed: never typed, always derived.

A claim compares one number from a table (`a`) with another (`b`), e.g. the test accuracy of the
pretrained runs against that of the random-init runs (a side may name a metric of its own). Each side selects one row of a table by its
columns (`where`); a study table gives the mean over seeds, its sample standard deviation and n. The
difference is given with its spread, twice its standard error (Welch: sqrt(sa²/na + sb²/nb)), about a
95 % interval; a test score adds the binomial variance p(1 - p)/n_test of each side, since every seed is
scored on the same test images (two seeds that agree exactly do not make a difference of one image
certain). The verdict:

- `higher` (a > b) and `lower` (a < b): *supported* when the difference is beyond its spread in the
  claimed direction, *contradicted* when beyond it the other way, *no difference* when the two numbers
  are equal, otherwise *within spread* (the data cannot tell);
- `not_lower` (a keeps up with b, e.g. accuracy as the world size grows): *supported* unless a falls
  below b by more than the spread;
- a side measured once (no spread) gives *holds once* or *fails once*: a direction, not evidence;
- a share of n test images (accuracy under attack, patch success) has the binomial spread of its n
  outcomes (unpaired, so on the same images it overstates the spread of a difference);
- a side whose row is missing, or whose runs all diverged or are missing, gives *no data*;
- a side resting on runs that collapsed to one class (every test prediction the same class: its score
  is the class balance, not what the model learnt) makes the claim *not evidence*, whatever the numbers;
  known from the study's runs table (results/tables/runs/<study>.csv) where there is one.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from frelon.atomic import write_text
from frelon.config import OTHER_TABLES
from frelon.errors import FrelonError
from frelon.report.tables import collapsed_counts, significant

RELATIONS = ("higher", "lower", "not_lower")
# Tables that are not a study's: name -> path


# Columns that are a share of the table's n images (one measurement each): their spread is binomial
PROPORTIONS = {"adversarial": ("accuracy",), "patch": ("success", "noise_success")}


def table_path(name: str) -> str:
    """Where the table a claim names is: a study's (results/tables/<study>.csv) or another study's."""
    return OTHER_TABLES.get(name, f"results/tables/{name}.csv")


def runs_path(name: str) -> str | None:
    """The runs table (one row per run) of a study's table a claim names; None for another study's."""
    return None if name in OTHER_TABLES else f"results/tables/runs/{name}.csv"


def inputs(claims: list[dict]) -> list[str]:
    """Every file the claims are checked on: the tables they name and, for a study's, its runs table."""
    names = {side["table"] for claim in claims for side in (claim["a"], claim["b"])}
    return sorted({table_path(name) for name in names} | {runs_path(name) for name in names} - {None})


def _label(side: dict) -> str:
    where = [f"{k}={v}" for k, v in side.get("where", {}).items()]
    return f"{side['table']}: " + ", ".join(where + ([side["metric"]] if "metric" in side else []))


def _select(side: dict, metric: str, tables: dict[str, pd.DataFrame]) -> pd.Series | None:
    """The one row of its table that `side` selects (None where none does), with `diverged_fraction`."""
    table = tables[side["table"]]
    if metric == "diverged_fraction" and {"diverged", "runs", "missing"} <= set(table):
        table = table.assign(diverged_fraction=table.diverged / (table.runs - table.missing).where(
            table.runs > table.missing), diverged_fraction_std=None)
    if metric not in table:
        raise FrelonError(f"claim on {_label(side)}: the table has no column {metric!r} "
                          f"(it has {', '.join(map(str, table.columns))}); fix the claim's metric in the config")
    rows = table
    for column, wanted in side.get("where", {}).items():
        if column not in table:
            raise FrelonError(f"claim on {_label(side)}: the table has no column {column!r} to select on")
        numeric = pd.to_numeric(rows[column], errors="coerce")
        if isinstance(wanted, (int, float)) and not isinstance(wanted, bool) and numeric.notna().all():
            rows = rows[numeric == wanted]  # 2 selects eps_255 2.0
        else:
            rows = rows[rows[column].astype(str) == str(wanted)]
    if len(rows) > 1:
        raise FrelonError(f"claim on {_label(side)}: {len(rows)} rows match; add columns to `where` until one does")
    return None if rows.empty else rows.iloc[0]


def _measure(side: dict, metric: str, row: pd.Series | None) -> tuple:
    """(mean, std over seeds, n, variance of the test set's own sampling) of `metric` in `row`."""
    if row is None or pd.isna(row[metric]):
        return None, None, None, 0.0
    if metric == "diverged_fraction":
        n = int(row.runs - row.missing)
        p = float(row[metric])
        return p, math.sqrt(p * (1 - p) * n / (n - 1)) if n > 1 else None, n, 0.0
    n = int(row["n"]) if "n" in row and pd.notna(row["n"]) else 1
    if metric in PROPORTIONS.get(side["table"], ()):  # a share of n images: the std of their 0/1 outcomes
        p = float(row[metric])
        return p, math.sqrt(p * (1 - p) * n / (n - 1)) if n > 1 else None, n, 0.0
    std = row.get(f"{metric}_std")
    value = float(row[metric])
    # every seed is scored on the same test images: their own sampling adds p(1 - p) / n_test
    images = row.get("n_test")
    sampling = value * (1 - value) / images if metric.startswith("test_") and pd.notna(images) and images else 0.0
    return value, None if std is None or pd.isna(std) else float(std), n, sampling


def verdict(difference: float, spread: float | None, relation: str) -> str:
    """The verdict on a difference (a - b, sign turned so that the claim says it is positive for
    `lower`) given its spread (None: a side measured once)."""
    if difference == 0 and relation != "not_lower":
        return "no difference"
    if spread is None:
        if relation == "not_lower":
            return "holds once" if difference >= 0 else "fails once"
        return "holds once" if difference > 0 else "fails once"
    if relation == "not_lower":
        return "supported" if difference >= -spread else "contradicted"
    if difference > spread:
        return "supported"
    return "contradicted" if difference < -spread else "within spread"


def _one_class(side: dict, row: pd.Series | None, runs: dict[str, pd.DataFrame]) -> tuple[int, int] | None:
    """(runs that collapsed to one class, runs scored) of the experiment `row` is; None where unknown (no
    runs table: another study's table, or a study's without one)."""
    if row is None or side["table"] not in runs or "experiment" not in row:
        return None
    table = runs[side["table"]]
    mine = table[table.experiment.astype(str) == str(row["experiment"])]
    scored = int((mine.status == "scored").sum()) if "status" in mine else len(mine)
    return collapsed_counts(mine).get(str(row["experiment"]), (0, scored))


def check(claims: list[dict], tables: dict[str, pd.DataFrame],
          runs: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """One row per claim: both numbers (mean, std, n), the difference, its spread and the verdict; with
    `runs` (a study's runs table by its name), how many runs of each side collapsed to one class, and the
    verdict *not evidence* where any did."""
    rows = []
    for claim in claims:
        relation, metric = claim.get("relation", "higher"), claim["metric"]
        if relation not in RELATIONS:
            raise FrelonError(f"claim {claim['claim']!r}: relation {relation!r}; use one of {', '.join(RELATIONS)}")
        measured, one_class = [], []
        for side in (claim["a"], claim["b"]):
            selected = _select(side, side.get("metric", metric), tables)
            measured.append(_measure(side, side.get("metric", metric), selected))
            one_class.append(_one_class(side, selected, runs or {}))
        (a, sa, na, va), (b, sb, nb, vb) = measured
        row = {"claim": claim["claim"], "metric": metric, "relation": relation,
               "a": _label(claim["a"]), "a_value": a, "a_std": sa, "a_n": na,
               "b": _label(claim["b"]), "b_value": b, "b_std": sb, "b_n": nb,
               "difference": None, "spread": None, "verdict": "no data",
               "a_one_class": None if one_class[0] is None else one_class[0][0],
               "b_one_class": None if one_class[1] is None else one_class[1][0], "note": ""}
        if a is not None and b is not None:
            difference = (a - b) if relation != "lower" else (b - a)
            spread = (2 * math.sqrt(sa ** 2 / na + sb ** 2 / nb + va + vb)
                      if sa is not None and sb is not None else None)
            row.update(difference=round(a - b, 4), spread=None if spread is None else round(spread, 4),
                       verdict=verdict(difference, spread, relation))
        notes = [f"{name} ({label.partition(': ')[2]}): {counts[0]} of {counts[1]} runs predicted one class only"
                 for name, label, counts in zip("ab", (row["a"], row["b"]), one_class) if counts and counts[0]]
        if notes:
            row.update(verdict="not evidence", note="; ".join(notes))
        rows.append(row)
    return pd.DataFrame(rows, columns=["claim", "metric", "relation", "a", "a_value", "a_std", "a_n", "b", "b_value",
                                       "b_std", "b_n", "difference", "spread", "verdict", "a_one_class",
                                       "b_one_class", "note"]).astype({"a_one_class": "Int64", "b_one_class": "Int64"})


def load_tables(claims: list[dict], root: str | os.PathLike = ".") -> dict[str, pd.DataFrame]:
    names = {side["table"] for claim in claims for side in (claim["a"], claim["b"])}
    return {name: pd.read_csv(Path(root) / table_path(name)) for name in names}


def load_runs(claims: list[dict], root: str | os.PathLike = ".") -> dict[str, pd.DataFrame]:
    """The runs tables of the study tables the claims name, where they exist."""
    names = {side["table"] for claim in claims for side in (claim["a"], claim["b"])}
    paths = {name: Path(root) / runs_path(name) for name in names if runs_path(name)}
    return {name: pd.read_csv(path) for name, path in paths.items() if path.exists()}


def _side(label: str, metric: str, value, std, n) -> str:
    """One side for people: `mean ± std (n=N)` over seeds; a share of n images with the spread of the
    images' own outcomes (not over seeds: no ±); one measurement as it is."""
    if value is None or pd.isna(value):
        return f"{label}: missing"
    table, _, where = label.partition(": ")
    own = where.rsplit(", ", 1)[-1]  # a side's own metric ends its label
    if (own if own and "=" not in own else metric) in PROPORTIONS.get(table, ()):
        spread = "" if std is None or pd.isna(std) else f"; per-image sd {significant(std)}"
        return f"{label}: {significant(value)} (a share of {int(n)} images{spread})"
    text = significant(value) + ("" if std is None or pd.isna(std) else f" ± {significant(std)}")
    return f"{label}: {text}" + ("" if n is None or pd.isna(n) else f" (n={int(n)})")


def markdown(table: pd.DataFrame) -> str:
    """Claims for people: each number as `mean ± std (n)` (a share of test images with its per-image
    spread instead), the difference with its spread (twice its standard error), the verdict, and why a
    claim is not evidence where one is not."""
    shown = pd.DataFrame({
        "claim": table.claim, "metric": table.metric,
        "a": [_side(*args) for args in zip(table.a, table.metric, table.a_value, table.a_std, table.a_n)],
        "b": [_side(*args) for args in zip(table.b, table.metric, table.b_value, table.b_std, table.b_n)],
        "a - b": ["" if pd.isna(d) else (("+" if d >= 0 else "") + significant(d)
                                         + ("" if pd.isna(s) else f" (spread {significant(s)})"))
                  for d, s in zip(table.difference, table.spread)],
        "verdict": table.verdict,
    }, dtype=object)
    if "note" in table and table.note.fillna("").astype(bool).any():
        shown["why"] = table.note.fillna("")
    return shown.to_markdown(index=False) + "\n"


def write(claims: list[dict], csv: str | os.PathLike, md: str | os.PathLike, root: str | os.PathLike = ".") -> pd.DataFrame:
    table = check(claims, load_tables(claims, root), load_runs(claims, root))
    write_text(csv, table.to_csv(index=False))
    write_text(md, markdown(table))
    return table
