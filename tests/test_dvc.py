"""`dvc repro` drives the same Snakemake targets and reproduces the demo's numbers."""

import json

import pandas as pd
import pytest
import yaml

from conftest import copy_workflow, run

pytestmark = pytest.mark.slow
MEASURED = ["experiment", "init", "n_test", "test_accuracy", "test_balanced_accuracy"]


def test_dvc_repro_reproduces_the_demo_table(tmp_path, demo_run):
    work = copy_workflow(tmp_path / "w")
    # the demo, trimmed to what this test compares (finetune runs depend on nothing the others do)
    config = yaml.safe_load((work / "config" / "demo.yaml").read_text())
    config["studies"] = {"finetune": config["studies"]["finetune"]}
    config["checkpointing"].update(cases=[{"model": "resnet18", "image_size": 32, "batch_sizes": [2]}],
                                   policies=["none", "all"], steps=1, warmup=0)
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    run(["git", "init", "-q"], cwd=work)
    run(["dvc", "init", "-q"], cwd=work)
    run(["dvc", "config", "core.analytics", "false"], cwd=work)
    run(["dvc", "repro"], cwd=work)

    ours = pd.read_csv(work / "results" / "tables" / "finetune.csv")[MEASURED]
    reference = pd.read_csv(demo_run / "results" / "tables" / "finetune.csv")[MEASURED]
    pd.testing.assert_frame_equal(ours, reference)

    status = run(["dvc", "status", "--json"], cwd=work)
    assert json.loads(status.stdout) == {}
    shown = run(["dvc", "metrics", "show", "--json"], cwd=work)
    assert "test_accuracy" in shown.stdout
    assert len(pd.read_csv(work / "results" / "checkpointing" / "checkpointing.csv")) == 2
    again = run(["dvc", "repro"], cwd=work)
    assert "didn't change, skipping" in again.stdout
