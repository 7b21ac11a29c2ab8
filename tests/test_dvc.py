"""DVC drives the same Snakemake targets: the course study (dvc.yaml) and the demo (demo/dvc.yaml),
in a fresh `git clone` of the project as a new user gets it."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, copy_workflow, run
from frelon.spec import all_runs

MEASURED = ["experiment", "init", "n_test", "test_accuracy", "test_balanced_accuracy"]
# each DVC pipeline and the config its stages give Snakemake, as a path relative to the dvc.yaml
PIPELINES = {"dvc.yaml": "config/config.yaml", "demo/dvc.yaml": "../config/demo.yaml"}


def clone_project(tmp_path: Path) -> Path:
    """A fresh `git clone` of the project as it stands in the working tree: every file git would commit,
    except the metrics a run of this checkout left (`results/metrics.json`, not ignored so that it can be
    committed: after `make demo` it is there, and a fresh clone has none)."""
    origin = tmp_path / "origin"
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO).stdout
    untracked = set(run(["git", "ls-files", "-z", "--others", "--exclude-standard"], cwd=REPO).stdout.split("\0"))
    for name in filter(None, listed.split("\0")):
        if name in untracked and name.startswith(("results/", "demo/results/")):
            continue
        if (REPO / name).is_file():  # a tracked file deleted in the working tree is left out
            (origin / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, origin / name)
    git = ["git", "-c", "user.name=frelon tests", "-c", "user.email=tests@frelon.invalid", "-c", "commit.gpgsign=false"]
    run(git + ["init", "-q"], cwd=origin)
    run(git + ["add", "-A"], cwd=origin)
    run(git + ["commit", "-q", "-m", "the working tree"], cwd=origin)
    run(git + ["clone", "-q", str(origin), "clone"], cwd=tmp_path)
    return tmp_path / "clone"


def trimmed_checkpointing(config: dict) -> None:
    config["checkpointing"].update(cases=[{"model": "resnet18", "image_size": 32, "batch_sizes": [2]}],
                                   policies=["none", "all"], steps=1, warmup=0)


def plotted_histories(pipeline: dict) -> set[str]:
    """Run folders whose history.csv a top-level plot of the pipeline draws."""
    files = [path for plot in pipeline["plots"] if isinstance(plot, dict)
             for props in plot.values() if isinstance(props.get("y"), dict) for path in props["y"]]
    assert all(path.endswith("/history.csv") for path in files)
    return {path.removesuffix("/history.csv") for path in files}


@pytest.mark.parametrize("dvcfile", PIPELINES)
def test_stages_call_snakemake_with_their_config_and_the_gpus(dvcfile):
    pipeline = yaml.safe_load((REPO / dvcfile).read_text())
    configfile = PIPELINES[dvcfile]
    assert (REPO / dvcfile).parent.joinpath(configfile).is_file()
    for name, stage in pipeline["stages"].items():
        cmd = stage["cmd"].split()  # one Snakemake target, last
        assert cmd[0] == "snakemake" and not cmd[-1].startswith("-") and cmd[-2] != "--configfile", name
        assert cmd[cmd.index("--configfile") + 1] == configfile, name
        assert "--resources gpu=$(frelon gpus)" in stage["cmd"], name
        assert [next(iter(p)) for p in stage["params"]] == [configfile], name
    # DVC never deletes prepared data or trained runs before Snakemake looks at them
    for name in ("data", "runs"):
        assert all(props.get("persist") for out in pipeline["stages"][name]["outs"] for props in out.values())
    assert pipeline["stages"]["report"]["metrics"] == [{"results/metrics.json": {"cache": False}}]


@pytest.mark.parametrize("dvcfile", PIPELINES)
def test_plots_draw_every_run_of_the_config(dvcfile):
    pipeline = yaml.safe_load((REPO / dvcfile).read_text())
    config = yaml.safe_load((REPO / dvcfile).parent.joinpath(PIPELINES[dvcfile]).read_text())
    plotted, runs = plotted_histories(pipeline), set(all_runs(config))
    assert plotted == runs, f"{dvcfile} plots: add {sorted(runs - plotted)}, remove {sorted(plotted - runs)}"


@pytest.mark.slow
def test_dvc_repro_of_the_course_stops_at_the_missing_hornet_folder(tmp_path):
    clone = clone_project(tmp_path)
    proc = run(["dvc", "repro"], cwd=clone, check=False, timeout=300)
    assert proc.returncode != 0
    said = proc.stdout + proc.stderr
    assert "datasets.hornet.source" in said and "raw/hornet" in said, said[-3000:]
    # stopped before any job: nothing downloaded, trained or recorded
    assert not (clone / "data").exists() and not (clone / "results").exists()
    assert not (clone / "dvc.lock").exists()


@pytest.mark.slow
def test_the_demo_through_dvc_is_reproduced_once(tmp_path):
    clone = clone_project(tmp_path)
    # the demo, trimmed to a minute: pretraining and one fine-tuning run of one epoch each, one process
    path = clone / "config" / "demo.yaml"
    config = yaml.safe_load(path.read_text())
    config["demo"].update(hornet={"presence": 20, "absence": 35, "image_size": 64},
                          source={"per_class": 20, "image_size": 64})
    config["demo"]["pretrain"]["train"].update(epochs=1)
    config["train"].update(world_size=1)
    finetune = config["studies"]["finetune"]
    finetune["experiments"] = {"pretrained": {**finetune["experiments"]["pretrained"], "train": {"epochs": 1}}}
    finetune["seeds"] = [0]
    config["studies"] = {"finetune": finetune}
    config["claims"] = []   # the stages' outputs are those of the full demo: an empty claims table, and
    config["adversarial"].update(models=["pretrained"], patch_steps=2, pgd_steps=1, eps=[0, 8])  # one model
    trimmed_checkpointing(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))

    run(["dvc", "repro", "demo/dvc.yaml"], cwd=clone)
    demo = clone / "demo"
    assert len(pd.read_csv(demo / "results" / "tables" / "finetune.csv")) == 1
    assert not (clone / "data").exists() and not (clone / "results").exists()  # the course's folders
    status = run(["dvc", "status", "--json", "demo/dvc.yaml"], cwd=clone)
    assert json.loads(status.stdout) == {}

    again = run(["dvc", "repro", "demo/dvc.yaml"], cwd=clone)
    assert "Running stage" not in again.stdout and "didn't change, skipping" in again.stdout
    # forced, the runs stage keeps its outputs (persist) and Snakemake finds them up to date
    model = demo / "results" / "runs" / "finetune" / "pretrained" / "seed0" / "model.pt"
    trained = model.stat().st_mtime_ns
    forced = run(["dvc", "repro", "--force", "--single-item", "demo/dvc.yaml:runs"], cwd=clone)
    assert "Nothing to be done" in forced.stdout + forced.stderr
    assert model.stat().st_mtime_ns == trained

    metrics = json.loads(run(["dvc", "metrics", "show", "--json", "demo/results/metrics.json"], cwd=clone).stdout)
    assert "test_accuracy" in json.dumps(metrics)
    run(["dvc", "plots", "show", "--out", str(tmp_path / "plots")], cwd=clone)
    html = (tmp_path / "plots" / "index.html").read_text()
    assert "finetune (demo): validation accuracy" in html and "checkpointing.png" in html
    plots = json.loads(run(["dvc", "plots", "show", "--json"], cwd=clone).stdout)["data"]
    drawn = plots["demo/dvc.yaml::finetune"][0]["content"]["data"]["values"]
    assert {row["filename"] for row in drawn} == {"pretrained/seed0/history.csv"}
    assert plots["demo/results/checkpointing/checkpointing.png"][0]["type"] == "image"

    # the numbers are those of Snakemake alone on the same config
    alone = copy_workflow(tmp_path / "alone")
    shutil.copy2(path, alone / "config" / "demo.yaml")
    run(["snakemake", "--cores", "2", "finetune", "--configfile", "config/demo.yaml"], cwd=alone)
    ours = pd.read_csv(demo / "results" / "tables" / "finetune.csv")[MEASURED]
    pd.testing.assert_frame_equal(ours, pd.read_csv(alone / "results" / "tables" / "finetune.csv")[MEASURED])

    # git sees only what a user commits: the lock file and the metrics (the rest is in DVC's cache)
    changed = run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=clone).stdout.splitlines()
    assert sorted(line[3:] for line in changed) == ["config/demo.yaml", "demo/dvc.lock", "demo/results/metrics.json"]
