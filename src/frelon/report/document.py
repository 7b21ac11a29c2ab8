"""results/report.md: every study's table and figures and the claims, in one page generated from the
pipeline's own outputs (nothing typed in), with links that work from the results folder."""

from __future__ import annotations

import os
from pathlib import Path

from frelon.atomic import write_text


def _link(path: str | os.PathLike, base: Path) -> str:
    return os.path.relpath(path, base).replace(os.sep, "/")


def _section(title: str, base: Path, tables: list[str], figures: list[str], note: str = "") -> list[str]:
    lines = [f"## {title}", ""]
    if note:
        lines += [note, ""]
    for table in tables:
        lines += [Path(table).read_text().rstrip(), ""]
    for figure in figures:
        lines += [f"![{Path(figure).stem}]({_link(figure, base)})", ""]
    return lines


def build(out: str | os.PathLike, config: dict, studies: dict[str, dict], claims_md: str | None = None,
          checkpointing: dict | None = None, adversarial: dict | None = None) -> str:
    """Write the report. `studies` maps a study to {table, figures, note}; `checkpointing` and
    `adversarial` to {tables, figures}. Paths are files the pipeline wrote; the report only arranges them."""
    base = Path(out).parent
    lines = ["# frelon: results", "",
             "Every number below was computed by the pipeline from its own runs; a missing run shows as "
             "missing, never as 0. Tables give the mean ± the sample standard deviation over seeds, with n "
             "(runs scored), `diverged` and `missing` counts. Reference numbers, where present, are "
             "labelled as such and were not measured here.", ""]
    if claims_md is not None:
        lines += _section("The course's claims, checked", base, [claims_md], [],
                          "Each claim compares two numbers; the spread is twice the standard error of their "
                          "difference (about a 95 % interval). *supported* / *contradicted*: the difference is "
                          "beyond its spread; *within spread*: the data cannot tell; *holds once* / *fails once*: "
                          "one measurement, a direction and no evidence.")
    for study, parts in studies.items():
        seeds = config["studies"][study].get("seeds")
        note = parts.get("note", "") + (f" Seeds: {', '.join(map(str, seeds))}." if seeds else "")
        lines += _section(f"Study: {study}", base, [parts["table"]], parts.get("figures", []), note.strip())
    if checkpointing:
        lines += _section("Gradient checkpointing: memory against time", base, checkpointing["tables"],
                          checkpointing["figures"])
    if adversarial:
        lines += _section("Adversarial examples and patch", base, adversarial["tables"], adversarial["figures"],
                          adversarial.get("note", ""))
    text = "\n".join(lines).rstrip() + "\n"
    write_text(out, text)
    return text
