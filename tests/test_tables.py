import json

import pandas as pd
import pytest

from frelon.report.tables import add_scaling, aggregate, run_table, write_metrics, write_table


def test_speedup_and_efficiency_are_against_one_process_doing_the_same_work():
    table = pd.DataFrame({
        "experiment": ["w1", "w2", "w4", "other"],
        "arch": ["resnet18"] * 3 + ["resnet34"], "norm": ["batch"] * 4, "residual": [True] * 4, "augmented": [False] * 4, "augment": ["mirror"] * 4,
        "init": ["random"] * 4, "batch_size": [32] * 4,
        "world_size": [1, 2, 4, 2], "epoch_seconds": [10.0, 5.5, 3.2, 7.0],
    })
    out = add_scaling(table).set_index("experiment")
    assert out.loc["w2", "speedup"] == pytest.approx(10 / 5.5, abs=1e-3)
    assert out.loc["w4", "efficiency"] == pytest.approx(10 / 3.2 / 4, abs=1e-3)
    assert pd.isna(out.loc["other", "speedup"])  # no one-process run of resnet34: the cell stays empty


def test_no_scaling_columns_without_a_one_process_run():
    table = pd.DataFrame({"arch": ["resnet18"], "norm": ["batch"], "residual": [True], "augmented": [False], "augment": ["mirror"], "init": ["random"],
                          "batch_size": [8], "world_size": [2], "epoch_seconds": [1.0]})
    assert "speedup" not in add_scaling(table)


def test_no_scaling_columns_in_a_study_of_one_world_size():
    table = pd.DataFrame({"arch": ["resnet18", "resnet34"], "norm": ["batch"] * 2, "residual": [True] * 2, "augmented": [False] * 2, "augment": ["mirror"] * 2,
                          "init": ["random"] * 2, "batch_size": [8] * 2, "world_size": [1, 1],
                          "epoch_seconds": [1.0, 2.0]})
    assert "speedup" not in add_scaling(table)


def _write_run(folder, experiment, metrics, seed=0, norm="none", epoch_seconds=0.5):
    folder.mkdir(parents=True)
    spec = {"experiment": f"ingredients/{experiment}", "seed": seed, "data": {"augmented": False, "augment": ["mirror"]},
            "model": {"arch": "resnet18", "norm": norm, "residual": True, "weights": None, "head_only": False},
            "train": {"epochs": 2, "world_size": 1, "batch_size": 8, "global_batch": 8, "lr_scaling": "none",
                      "lr": 0.2, "lr_schedule": {"warmup_epochs": 0}}}
    (folder / "spec.json").write_text(json.dumps(spec))
    (folder / "metrics.json").write_text(json.dumps({**metrics, "train_seconds": 1.0}))
    (folder / "history.csv").write_text(f"epoch,epoch_seconds,images_per_second\n1,{epoch_seconds},16\n")
    return folder / "metrics.json"


def test_a_diverged_run_has_empty_score_cells_and_is_counted(tmp_path):
    run = tmp_path / "results" / "runs" / "ingredients"
    ok = _write_run(run / "ok", "ok", {"n": 39, "accuracy": 0.75, "balanced_accuracy": 0.7})
    blown = _write_run(run / "blown", "blown", {"diverged": {"step": 7, "epoch": 2}, "accuracy": None,
                                                "balanced_accuracy": None})
    runs = run_table([ok, blown])
    assert runs.set_index("experiment").loc["blown", "diverged_at_step"] == 7
    table = aggregate(runs)
    write_table(table, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "t.tex")
    csv = pd.read_csv(tmp_path / "t.csv").set_index("experiment")
    assert pd.isna(csv.loc["blown", "test_accuracy"]) and csv.loc["blown", "diverged"] == 1
    assert csv.loc["blown", "n"] == 0 and csv.loc["blown", "runs"] == 1
    assert csv.loc["ok", "test_accuracy"] == 0.75 and csv.loc["ok", "diverged"] == 0
    markdown = (tmp_path / "t.md").read_text()
    assert "nan" not in markdown and "<NA>" not in markdown and "None" not in markdown
    summary = write_metrics({"ingredients": tmp_path / "t.csv"}, tmp_path / "m.json")
    assert summary["ingredients"] == {"ok": {"test_accuracy": 0.75, "test_balanced_accuracy": 0.7}, "blown": {}}


def test_seeds_give_mean_sample_std_and_n_and_a_missing_run_is_missing_not_zero(tmp_path):
    study = tmp_path / "results" / "runs" / "ingredients"
    accuracies = {"batch": [0.70, 0.80, 0.90], "none": [0.60, 0.64]}
    paths = []
    for norm, values in accuracies.items():
        for seed, value in enumerate(values):
            paths.append(_write_run(study / norm / f"seed{seed}", norm, {"n": 40, "accuracy": value,
                                                                         "balanced_accuracy": value}, seed, norm,
                                    epoch_seconds=1.0 + seed))
    paths.append(study / "none" / "seed2")  # listed, never run: no folder at all
    runs = run_table(paths)
    assert list(runs.status) == ["scored"] * 5 + ["missing"]
    assert runs.iloc[-1].experiment == "none" and runs.iloc[-1].seed == 2
    table = aggregate(runs).set_index("experiment")
    assert table.loc["batch", "test_accuracy"] == pytest.approx(0.8)
    assert table.loc["batch", "test_accuracy_std"] == pytest.approx(0.1)  # sample std (n - 1)
    assert table.loc["batch", "n"] == 3 and table.loc["batch", "missing"] == 0
    assert table.loc["none", "test_accuracy"] == pytest.approx(0.62)
    assert table.loc["none", "test_accuracy_std"] == pytest.approx(0.0283, abs=1e-4)
    assert (table.loc["none", "n"], table.loc["none", "runs"], table.loc["none", "missing"]) == (2, 3, 1)
    assert table.loc["batch", "epoch_seconds"] == pytest.approx(2.0)
    write_table(aggregate(runs), tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "t.tex")
    markdown = (tmp_path / "t.md").read_text()
    assert "0.8 ± 0.1" in markdown and "0.62 ± 0.0283" in markdown
    tex = (tmp_path / "t.tex").read_text()
    assert tex.startswith("\\begin{tabular}") and "0.8 $\\pm$ 0.1" in tex and "test\\_accuracy" in tex


def test_one_seed_has_no_spread_and_a_wholly_missing_experiment_has_empty_cells(tmp_path):
    study = tmp_path / "results" / "runs" / "ingredients"
    one = _write_run(study / "one", "one", {"n": 40, "accuracy": 0.7, "balanced_accuracy": 0.7})
    table = aggregate(run_table([one, study / "never"])).set_index("experiment")
    assert table.loc["one", "test_accuracy"] == 0.7 and pd.isna(table.loc["one", "test_accuracy_std"])
    assert pd.isna(table.loc["never", "test_accuracy"]) and table.loc["never", "missing"] == 1
    assert table.loc["never", "n"] == 0


def test_the_table_command_writes_every_format_and_names_what_is_missing(tmp_path, capsys):
    from frelon.cli import main

    study = tmp_path / "results" / "runs" / "ingredients"
    one = _write_run(study / "one" / "seed0", "one", {"n": 40, "accuracy": 0.7, "balanced_accuracy": 0.7})
    out = tmp_path / "tables"
    assert main(["table", str(one), str(study / "one" / "seed1"), "--csv", str(out / "s.csv"), "--md",
                 str(out / "s.md"), "--tex", str(out / "s.tex"), "--runs-csv", str(out / "runs" / "s.csv")]) == 0
    assert "1 of 2 runs have no metrics.json (shown as missing): one seed 1" in capsys.readouterr().out
    assert len(pd.read_csv(out / "runs" / "s.csv")) == 2 and (out / "s.tex").exists()
