import json

import pandas as pd
import pytest

from frelon.report.tables import add_scaling, study_table, write_metrics, write_table


def test_speedup_and_efficiency_are_against_one_process_doing_the_same_work():
    table = pd.DataFrame({
        "experiment": ["w1", "w2", "w4", "other"],
        "arch": ["resnet18"] * 3 + ["resnet34"], "norm": ["batch"] * 4, "residual": [True] * 4, "augmented": [False] * 4,
        "init": ["random"] * 4, "batch_size": [32] * 4,
        "world_size": [1, 2, 4, 2], "epoch_seconds": [10.0, 5.5, 3.2, 7.0],
    })
    out = add_scaling(table).set_index("experiment")
    assert out.loc["w2", "speedup"] == pytest.approx(10 / 5.5, abs=1e-3)
    assert out.loc["w4", "efficiency"] == pytest.approx(10 / 3.2 / 4, abs=1e-3)
    assert pd.isna(out.loc["other", "speedup"])  # no one-process run of resnet34: the cell stays empty


def test_no_scaling_columns_without_a_one_process_run():
    table = pd.DataFrame({"arch": ["resnet18"], "norm": ["batch"], "residual": [True], "augmented": [False], "init": ["random"],
                          "batch_size": [8], "world_size": [2], "epoch_seconds": [1.0]})
    assert "speedup" not in add_scaling(table)


def test_no_scaling_columns_in_a_study_of_one_world_size():
    table = pd.DataFrame({"arch": ["resnet18", "resnet34"], "norm": ["batch"] * 2, "residual": [True] * 2, "augmented": [False] * 2,
                          "init": ["random"] * 2, "batch_size": [8] * 2, "world_size": [1, 1],
                          "epoch_seconds": [1.0, 2.0]})
    assert "speedup" not in add_scaling(table)


def test_a_diverged_run_has_empty_score_cells_and_the_step_it_diverged_at(tmp_path):
    run = tmp_path / "results" / "runs" / "ingredients"
    specs = {}
    for name, metrics in (("ok", {"n": 39, "accuracy": 0.75, "balanced_accuracy": 0.7}),
                          ("blown", {"diverged": {"step": 7, "epoch": 2}, "accuracy": None,
                                     "balanced_accuracy": None})):
        (run / name).mkdir(parents=True)
        spec = {"experiment": f"ingredients/{name}", "data": {"augmented": False},
                "model": {"arch": "resnet18", "norm": "none", "residual": True, "weights": None, "head_only": False},
                "train": {"epochs": 2, "world_size": 1, "batch_size": 8, "global_batch": 8, "lr_scaling": "none",
                          "lr": 0.2, "lr_schedule": {"warmup_epochs": 0}}}
        (run / name / "spec.json").write_text(json.dumps(spec))
        (run / name / "metrics.json").write_text(json.dumps({**metrics, "train_seconds": 1.0}))
        (run / name / "history.csv").write_text("epoch,epoch_seconds,images_per_second\n1,0.5,16\n")
        specs[name] = run / name / "metrics.json"
    table = study_table([specs["ok"], specs["blown"]])
    write_table(table, tmp_path / "t.csv", tmp_path / "t.md")
    csv = pd.read_csv(tmp_path / "t.csv").set_index("experiment")
    assert pd.isna(csv.loc["blown", "test_accuracy"]) and csv.loc["blown", "diverged_at_step"] == 7
    assert csv.loc["ok", "test_accuracy"] == 0.75 and pd.isna(csv.loc["ok", "diverged_at_step"])
    markdown = (tmp_path / "t.md").read_text()
    assert "nan" not in markdown and "<NA>" not in markdown
    blown_line = next(line for line in markdown.splitlines() if line.startswith("| blown"))
    assert " 7 " in blown_line
    summary = write_metrics({"ingredients": tmp_path / "t.csv"}, tmp_path / "m.json")
    assert summary["ingredients"] == {"ok": {"test_accuracy": 0.75, "test_balanced_accuracy": 0.7}, "blown": {}}
