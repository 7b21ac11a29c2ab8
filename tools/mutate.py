"""Mutation testing of the modules whose numbers the tables report: `make mutate`.

Each module is mutated alone (mutmut 3: one small change at a time, an operator, a constant, a call's
argument) and each mutant is run against that module's own fast tests, listed below. A mutant the tests
fail on is killed (a timeout counts as killed: the tests noticed); one they pass is a survivor. A survivor
must either be killed by a new test or be listed in tools/equivalent_mutants.yaml with the reason it
changes nothing observable (its name and its changed line, so that an edit of the code shows it again).

    python tools/mutate.py                      # every module; exit 1 below 90 % or with unexplained survivors
    python tools/mutate.py spec samplers        # some modules, by short name
    python tools/mutate.py --jobs 2             # mutants at once (default: the CPUs)

Each module runs in its own scratch copy of the project under .mutate/<name>/ (mutmut writes mutants/
there); results go to .mutate/report.md and .mutate/report.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".mutate"
EQUIVALENT = REPO / "tools" / "equivalent_mutants.yaml"
TARGET = 0.90

# module: its own fast tests (the tests of its behaviour, not of the pipeline around it)
MODULES = {
    "targets": ("src/frelon/tasks/detection/targets.py",  # values_at: read at the centres by decode and loss
                ["tests/test_centernet_targets.py", "tests/test_centernet_decode.py", "tests/test_centernet_loss.py"]),
    "decode": ("src/frelon/tasks/detection/decode.py", ["tests/test_centernet_decode.py"]),
    "loss": ("src/frelon/tasks/detection/loss.py", ["tests/test_centernet_loss.py"]),
    "detection_eval": ("src/frelon/evaluate/detection.py",
                       ["tests/test_voc07_ap.py", "tests/test_coco_eval.py", "tests/test_detection_data.py"]),
    "classification_eval": ("src/frelon/evaluate/classification.py", ["tests/test_distributed_eval.py"]),
    "schedules": ("src/frelon/train/schedules.py", ["tests/test_schedules.py"]),
    "samplers": ("src/frelon/train/samplers.py", ["tests/test_samplers.py"]),
    "spec": ("src/frelon/spec.py", ["tests/test_config.py"]),
    "attacks": ("src/frelon/attacks.py", ["tests/test_adversarial.py"]),
}
KILLED = {"killed", "timeout", "segfault", "caught by type check"}
COPY = ("src", "tests", "config", "pyproject.toml")


def _mutmut_config(module: str, tests: list[str]) -> str:
    """The [tool.mutmut] table for one module: mutate it only, select its tests, leave out the slow ones."""
    selection = ", ".join(json.dumps(t) for t in tests)
    return (
        "\n[tool.mutmut]\n"
        'source_paths = ["src"]\n'
        'also_copy = ["config"]\n'  # the tests read the shipped configs and their schema
        f"only_mutate = [{json.dumps(module)}]\n"
        f"pytest_add_cli_args_test_selection = [{selection}]\n"
        'pytest_add_cli_args = ["-m", "not slow", "-p", "no:cacheprovider"]\n'
        "use_git_change_detection = false\n"
        # a mutant that makes a test loop is stopped at 4x the test's own time (mutmut's default is 15x: a
        # minute per such mutant), and counted as killed: the tests noticed it
        "timeout_multiplier = 4.0\n"
        "timeout_constant = 2.0\n"
    )


def _scratch(name: str, module: str, tests: list[str]) -> Path:
    """A copy of the project for one module's run, its pyproject.toml carrying the module's mutmut table."""
    folder = WORK / name
    shutil.rmtree(folder, ignore_errors=True)

    def left_out(directory: str, names: list[str]) -> list[str]:
        """At the top only COPY; below it, no bytecode."""
        at_top = Path(directory) == REPO
        return [n for n in names if (at_top and n not in COPY) or n == "__pycache__" or n.endswith(".pyc")]

    WORK.mkdir(exist_ok=True)
    shutil.copytree(REPO, folder, ignore=left_out)
    pyproject = folder / "pyproject.toml"
    text = re.sub(r"\n\[tool\.mutmut\][^\[]*", "\n", pyproject.read_text())
    pyproject.write_text(text + _mutmut_config(module, tests))
    return folder


def _mutmut(folder: Path, *args: str) -> subprocess.CompletedProcess:
    # one thread: mutmut forks each mutant's tests from a process that ran torch, and a forked child
    # inherits OpenMP's thread pool without its threads (it would hang until the timeout, read as a kill)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "FRELON_WARM": "0", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=folder, env=env, text=True,
                          capture_output=True)


def _results(folder: Path) -> dict[str, str]:
    """Every mutant's status, by name."""
    listing = _mutmut(folder, "results", "--all", "true")
    if listing.returncode:
        raise SystemExit(f"mutmut results failed in {folder}:\n{listing.stdout}{listing.stderr}")
    found = (re.match(r"\s+(\S+): (.+)$", line) for line in listing.stdout.splitlines())
    return {m.group(1): m.group(2).strip() for m in found if m}


def _changed_line(folder: Path, name: str) -> str:
    """The mutant's changed line (the first `+` line of its diff), to tell it apart after an edit."""
    diff = _mutmut(folder, "show", name).stdout
    added = [line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return added[0] if added else diff.strip()


def _load_equivalent() -> dict:
    import yaml

    if not EQUIVALENT.exists():
        return {}
    return {entry["mutant"]: entry for entry in (yaml.safe_load(EQUIVALENT.read_text()) or [])}


def run_module(name: str, jobs: int, equivalent: dict) -> dict:
    module, tests = MODULES[name]
    tests = [t for t in tests if (REPO / t).exists()]
    folder = _scratch(name, module, tests)
    started = time.monotonic()
    run = _mutmut(folder, "run", "--max-children", str(jobs))
    seconds = time.monotonic() - started
    statuses = _results(folder)
    if run.returncode or not statuses:
        raise SystemExit(f"mutmut run failed for {module} (exit {run.returncode}):\n{run.stdout[-3000:]}{run.stderr[-3000:]}")
    survivors = []
    for mutant, status in sorted(statuses.items()):
        if status in KILLED:
            continue
        line = _changed_line(folder, mutant)
        known = equivalent.get(mutant)
        survivors.append({"mutant": mutant, "status": status, "line": line,
                          "reason": known["reason"] if known and known.get("line") == line else None})
    killed = len(statuses) - len(survivors)
    timeouts = sum(status == "timeout" for status in statuses.values())
    return {"module": module, "tests": tests, "mutants": len(statuses), "killed": killed, "timeouts": timeouts,
            "rate": killed / len(statuses), "seconds": round(seconds), "survivors": survivors}


def report(results: list[dict]) -> tuple[str, bool]:
    lines = ["| module | mutants | killed | of which by timeout | rate | equivalent | unexplained | seconds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    ok = True
    for r in results:
        explained = sum(s["reason"] is not None for s in r["survivors"])
        unexplained = len(r["survivors"]) - explained
        ok &= r["rate"] >= TARGET and unexplained == 0
        lines.append(f"| {r['module']} | {r['mutants']} | {r['killed']} | {r['timeouts']} | {r['rate']:.1%} | "
                     f"{explained} | {unexplained} | {r['seconds']} |")
    for r in results:
        for s in r["survivors"]:
            why = s["reason"] or "UNEXPLAINED: kill it with a test, or list it in tools/equivalent_mutants.yaml"
            lines.append(f"\n- `{s['mutant']}` ({s['status']}): `{s['line']}`\n  {why}")
    return "\n".join(lines) + "\n", ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", choices=[[], *MODULES], metavar="MODULE",
                        help=f"short names: {', '.join(MODULES)} (default: all)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="mutants run at once")
    args = parser.parse_args(argv)
    equivalent = _load_equivalent()
    results = []
    for name in args.modules or MODULES:
        print(f"{name}: mutating {MODULES[name][0]} against {', '.join(MODULES[name][1])}", flush=True)
        results.append(run_module(name, args.jobs, equivalent))
        r = results[-1]
        print(f"  {r['killed']}/{r['mutants']} killed ({r['rate']:.1%}) in {r['seconds']} s", flush=True)
    text, ok = report(results)
    WORK.mkdir(exist_ok=True)
    (WORK / "report.md").write_text(text)
    (WORK / "report.json").write_text(json.dumps(results, indent=1))
    print(text)
    print(f"every module at {TARGET:.0%} or more, every survivor explained" if ok else
          f"below {TARGET:.0%} in a module, or a survivor unexplained (above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
