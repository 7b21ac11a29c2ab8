"""results/report.md: every study's table and figures and the claims, in one page generated from the
pipeline's own outputs (nothing typed in), with links that work from the results folder. A header says
what ran: the config files, the data, the machine and the date."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

import pandas as pd

from frelon.atomic import write_text
from frelon.config import archive_name, used_datasets
from frelon.report.tables import collapsed_counts, compact

# Legends of the figures, by what ends their file name (<study>.png: the training curves)
CAPTIONS = {
    "curves": "One row per experiment: training loss, validation score and the learning rate of every step; "
              "line: the mean over seeds, band: their range; grey: the other experiments, for comparison.",
    "predictions": "Validation images: true boxes green, labelled with their class; confident predictions red, "
                   "labelled with their class and score.",
    "scaling": "Speed-up and efficiency against the world size; error bars: the standard deviation over seeds.",
    "augment": "The same training images as each setting of the study draws them in its first epoch.",
}


def _link(path: str | os.PathLike, base: Path) -> str:
    return os.path.relpath(path, base).replace(os.sep, "/")


def _caption(figure: str, study: str | None = None) -> str:
    stem = Path(figure).stem
    if stem == study:
        return CAPTIONS["curves"]
    return CAPTIONS.get(stem) or (CAPTIONS.get(stem.rsplit("-", 1)[-1], "") if study and "-" in stem else "")


def _section(title: str, base: Path, tables: list[str], figures: list[str], note: str = "",
             study: str | None = None) -> list[str]:
    """A section: `tables` are Markdown (files or text: a line break tells them apart), then the figures,
    each with its legend (`study`: the section's, whose <study>.png are its curves)."""
    lines = [f"## {title}", ""]
    if note:
        lines += [note, ""]
    for table in tables:
        lines += [(table if "\n" in table else Path(table).read_text()).rstrip(), ""]
    for figure in figures:
        lines += [f"![{Path(figure).stem}]({_link(figure, base)})", ""]
        if _caption(figure, study):
            lines += [f"*{_caption(figure, study)}*", ""]
    return lines


# --- the header ----------------------------------------------------------------------------------------

def host_machine() -> dict:
    """This host: {"cpu": model name, "cores": logical cores, "gpus": [names of the GPUs torch sees]}."""
    cpu = None
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), None)
    except OSError:
        pass
    gpus = []
    try:
        import torch

        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return {"cpu": cpu or platform.processor() or platform.machine(), "cores": os.cpu_count(), "gpus": gpus}


def _describe(machine: dict) -> str:
    cores = f" ({machine['cores']} cores)" if machine.get("cores") else ""
    gpus = machine.get("gpus") or []
    names = {name: gpus.count(name) for name in gpus}
    return f"{machine.get('cpu') or 'unknown CPU'}{cores}, " + (
        ", ".join(f"{n} × {name}" for name, n in names.items()) if gpus else "no GPU")


def _run_files(runs: dict[str, list[str]], name: str) -> list[dict]:
    """The `name` JSON file (spec.json, metrics.json) of every run that has one."""
    found = []
    for folders in runs.values():
        for folder in folders:
            path = Path(folder) / name
            if path.exists():
                found.append(json.loads(path.read_text()))
    return found


def machine(runs: dict[str, list[str]], measured_on: list[str] = (), host: dict | None = None) -> str:
    """Where the runs ran: the machines their metrics.json record ({"machine": {"cpu", "cores", "gpus"}}), and
    the devices other studies name (`measured_on`: the checkpointing study's GPU); where none is recorded,
    this host's (`host`: host_machine()), the one that builds the report, named as such. Ends with the
    devices the runs' specs asked for."""
    recorded = list(dict.fromkeys(_describe(m["machine"]) for m in _run_files(runs, "metrics.json")
                                  if isinstance(m.get("machine"), dict)))
    gpus = sorted({d for d in measured_on if isinstance(d, str) and d != "cpu"})
    if recorded:
        text = "; ".join(recorded) + " (recorded by the runs)"
    else:
        text = _describe(host or host_machine()) + " (the host that built this report; the runs record no machine)"
    if gpus:
        text += f"; the checkpointing study measured on {', '.join(gpus)}"
    devices = sorted({str(spec.get("device")) for spec in _run_files(runs, "spec.json") if spec.get("device")})
    return text + (f"; the runs' device: {', '.join(devices)}" if devices else "")


def _source(entry) -> str:
    """Where a dataset comes from, as its config says: a folder, an archive, archives, or files."""
    if isinstance(entry, str):
        return entry
    if "source" in entry:
        return _source(entry["source"])
    if "archive" in entry:
        return archive_name(entry["archive"]["url"]) + (f" ({entry['subdir']})" if entry.get("subdir") else "")
    for key in ("root", "devkit"):
        if key in entry:
            return f"{entry.get('format', '')} {entry[key]}".strip()
    if "archives" in entry:
        return ", ".join(archive_name(a["url"]) for a in entry["archives"])
    return ", ".join(entry[split]["annotations"] for split in ("train", "val") if split in entry)


def data(config: dict) -> str:
    """The data the studies used: generated by the demo, or the user's as configured; each dataset with
    its source (and image size, or its splits)."""
    parts = []
    for name in used_datasets(config):
        entry = config["datasets"].get(name) or config.get("detection_data", {})[name]
        detail = [f"{entry['image_size']} px"] if "image_size" in entry else []
        detail += [f"{split} {entry[split]}" for split in ("train", "val") if isinstance(entry.get(split), str)]
        parts.append(f"{name} ({'; '.join([_source(entry), *detail])})")
    if "demo" in config:
        return "generated by the demo (`demo` in the config, under data/demo/): " + ", ".join(parts)
    return "as configured: " + ", ".join(parts)


def header(config: dict, configfiles: list[str] = (), config_args: list[str] = (), runs: dict | None = None,
           measured_on: list[str] = (), date: datetime.datetime | None = None, host: dict | None = None,
           one_class: dict[str, dict] | None = None) -> list[str]:
    """What the report is of: the config files (and `--config` overrides) it ran with, the data, the
    machine and the date, and the runs that predicted one class ({study: {experiment: (runs, scored)}});
    then the legend of every table (± defined once)."""
    files = ", ".join(f"`{os.path.relpath(f) if os.path.isabs(f) else f}`" for f in configfiles) or "none named"
    overrides = f" with `--config {' '.join(config_args)}`" if config_args else ""
    date = date or datetime.datetime.now(datetime.timezone.utc)
    return [
        "# frelon: results", "",
        f"- **Config**: {files}{overrides}",
        f"- **Data**: {data(config)}",
        f"- **Machine**: {machine(runs or {}, measured_on, host)}",
        f"- **Date**: {date.strftime('%Y-%m-%d %H:%M %Z').strip()} (report built)",
        *(["- **Runs that predicted one class**: " + "; ".join(
            f"{study}: " + ", ".join(f"{e} ({n} of {scored})" for e, (n, scored) in found.items())
            for study, found in one_class.items())] if one_class else []), "",
        "Every number below was computed by the pipeline from its own runs; a missing run shows as missing, "
        "never as 0. **± is the standard deviation over seeds** (sample, n − 1), and means nothing else in "
        "this report; n counts the runs scored, `diverged` and `missing` the others. Numbers have 3 significant "
        "digits; each table shows the columns that differ between its rows, says what is the same in all of "
        "them, and links to its full CSV. *one class*: runs whose every test prediction was the same class "
        "(their score is the class balance, not what the model learnt). Reference numbers, where present, "
        "are labelled as such and were not measured here.", ""]


# --- the document --------------------------------------------------------------------------------------

def _table(csv: str, base: Path, runs_csv: str | None = None, timings: bool = False) -> tuple[str, dict]:
    """A study's compact table and a link to its full CSV; and its runs that collapsed to one class."""
    table = pd.read_csv(csv)
    runs = pd.read_csv(runs_csv) if runs_csv and Path(runs_csv).exists() else pd.DataFrame()
    one_class = collapsed_counts(runs) if "experiment" in runs else {}
    links = f"Full table: [{_link(csv, base)}]({_link(csv, base)})"
    if runs_csv:
        links += f"; one row per run: [{_link(runs_csv, base)}]({_link(runs_csv, base)})"
    return compact(table, timings=timings, one_class=one_class) + "\n" + links + ".\n", one_class


def _one_class_note(one_class: dict[str, tuple[int, int]]) -> str:
    return ("**Runs that predicted one class** (every test image given the same class; not evidence of what the "
            "model learnt): " + ", ".join(f"{e} ({n} of {scored} runs)" for e, (n, scored) in one_class.items())
            + ".")


# Other studies' tables: the columns that name a row, and the scores
OTHER_TABLES = {"checkpointing": (["model", "image_size", "batch_size", "policy"],
                                  ["saved_activation_mb", "peak_memory_mb", "step_ms", "max_batch", "saved_ratio",
                                   "time_ratio"]),
                "attacks": (["model", "attack", "eps_255"], ["accuracy"]),
                "patch": (["model", "area"], ["success", "noise_success"])}


def _other_table(path: str, base: Path) -> str:
    """Another study's table, compact when it is a CSV the report knows the columns of; else as it is."""
    path = Path(path)
    if path.suffix != ".csv":
        return path.read_text()
    identity, scores = OTHER_TABLES.get(path.stem, (None, None))
    table = pd.read_csv(path)
    identity = identity or list(table.columns[:1])
    scores = scores if scores is not None else [c for c in table.columns if c not in identity]
    return compact(table, identity, scores) + f"\nFull table: [{_link(path, base)}]({_link(path, base)}).\n"


def build(out: str | os.PathLike, config: dict, studies: dict[str, dict], claims_md: str | None = None,
          checkpointing: dict | None = None, adversarial: dict | None = None, configfiles: list[str] = (),
          config_args: list[str] = (), runs: dict[str, list[str]] | None = None,
          date: datetime.datetime | None = None, host: dict | None = None) -> str:
    """Write the report. `studies` maps a study to {table (its CSV), runs (its runs CSV), figures, note};
    `checkpointing` and `adversarial` to {tables (CSV, or Markdown shown as it is), figures, note}. Paths
    are files the pipeline wrote; the report only arranges them. The header: `configfiles` and
    `config_args` (what Snakemake ran with), `runs` (each study's run folders: the machine and device
    they record), `date` (default now, UTC) and `host` (default this host: see `machine`)."""
    base = Path(out).parent
    measured_on = []
    if checkpointing:
        for table in checkpointing["tables"]:
            if Path(table).suffix == ".csv" and Path(table).exists():
                measured_on += pd.read_csv(table).get("device", pd.Series(dtype=object)).dropna().tolist()
    sections, collapsed = [], {}
    for study, parts in studies.items():
        settings = config["studies"][study]
        seeds = settings.get("seeds")
        table, one_class = _table(parts["table"], base, parts.get("runs"), bool(settings.get("timed")))
        if one_class:
            collapsed[study] = one_class
        note = parts.get("note", "") + (f" Seeds: {', '.join(map(str, seeds))}." if seeds else "")
        if one_class:
            note += " " + _one_class_note(one_class)
        sections += _section(f"Study: {study}", base, [table], parts.get("figures", []), note.strip(), study)
    lines = header(config, configfiles, config_args, runs, measured_on, date, host, collapsed)
    if claims_md is not None:
        lines += _section("The course's claims, checked", base, [claims_md], [],
                          "Each claim compares two numbers (mean ± its standard deviation over seeds, n runs; a "
                          "share of test images with the spread of the images' own outcomes instead). The "
                          "difference's *spread* is twice its standard error (about a 95 % interval). "
                          "*supported* / *contradicted*: the difference is beyond its spread; *within spread*: "
                          "the data cannot tell; *no difference*: the two numbers are equal; *holds once* / "
                          "*fails once*: one measurement, a direction and no evidence; *not evidence*: a side "
                          "rests on runs that predicted one class.")
    lines += sections
    for title, parts in (("Gradient checkpointing: memory against time", checkpointing),
                         ("Adversarial examples and patch", adversarial)):
        if parts:
            lines += _section(title, base, [_other_table(t, base) for t in parts["tables"]], parts["figures"],
                              parts.get("note", ""))
    text = "\n".join(lines).rstrip() + "\n"
    write_text(out, text)
    return text
