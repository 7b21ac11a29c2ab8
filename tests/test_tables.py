import json

import pandas as pd
import pytest

from frelon.report.tables import (add_scaling, aggregate, collapsed_counts, compact, run_table, significant,
                                  write_metrics, write_table)


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


def test_numbers_are_shown_at_3_significant_digits_and_whole_numbers_in_full():
    shown = [significant(v) for v in (0.631578, 0.0456789, 0.000171336, 12.345, 123.456, 1234.5, 999.6, 96, 96.0,
                                      1.0, 0.5, -0.04321, None, float("nan"), "mirror", True)]
    assert shown == ["0.632", "0.0457", "0.000171", "12.3", "123", "1234", "1000", "96", "96", "1", "0.5", "-0.0432",
                     "", "", "mirror", "True"]


def _study_table():
    """A study table as `aggregate` writes it: settings, counts, mean and std of the scores and timings."""
    return pd.DataFrame({
        "experiment": ["norm-batch", "norm-none", "plain34"], "arch": ["resnet18", "resnet18", "resnet34"],
        "norm": ["batch", "none", "batch"], "residual": [True, True, False], "init": ["random"] * 3,
        "lr": [0.02] * 3, "runs": [3] * 3, "n": [3, 2, 3], "diverged": [0, 1, 0], "missing": [0] * 3,
        "test_accuracy": [0.631578, 0.5, 0.70001], "test_accuracy_std": [0.0456789, None, 0.0123456],
        "test_balanced_accuracy": [0.6, 0.5, 0.7], "test_balanced_accuracy_std": [0.01, None, 0.02],
        "epoch_seconds": [1.234, 1.5, 2.25], "epoch_seconds_std": [0.1, 0.2, 0.3],
        "speedup": [None] * 3, "speedup_std": [None] * 3})


def _columns(markdown: str) -> list[str]:
    return [c.strip() for c in markdown.splitlines()[0].strip("|").split("|")]


def test_the_compact_table_shows_what_varies_identity_first_then_the_scores():
    table = _study_table()
    text = compact(table)
    assert _columns(text) == ["experiment", "arch", "norm", "residual", "n", "diverged", "test_accuracy",
                              "test_balanced_accuracy"]
    assert "| norm-batch   |" in text and "0.632 ± 0.0457" in text and "0.7 ± 0.0123" in text
    assert "Same in every row: init random, lr 0.02, runs 3, missing 0." in text
    assert "epoch_seconds" not in text and "speedup" not in text  # an untimed study's timings: in the CSV only
    timed = compact(table, timings=True)
    assert _columns(timed)[-1] == "epoch_seconds" and "1.23 ± 0.1" in timed
    assert "Empty in every row (not measured): speedup." in timed
    assert "nan" not in text + timed and "None" not in text + timed


def test_the_compact_table_of_another_study_names_its_rows_by_their_columns():
    attacks = pd.DataFrame({"model": ["pretrained"] * 4, "attack": ["fgsm", "fgsm", "pgd", "pgd"],
                            "eps_255": [0.0, 2.0, 0.0, 2.0], "accuracy": [0.9166667, 0.41666, 0.9166667, 0.0104],
                            "n": [96] * 4})
    text = compact(attacks, ["model", "attack", "eps_255"], ["accuracy"])
    assert _columns(text) == ["model", "attack", "eps_255", "accuracy"]
    assert "0.917" in text and "0.0104" in text and "Same in every row: n 96." in text
    one_attack = compact(attacks[attacks.attack == "pgd"], ["model", "attack", "eps_255"], ["accuracy"])
    assert _columns(one_attack) == ["model", "eps_255", "accuracy"]  # the first names the rows, the others vary
    assert "Same in every row: attack pgd, n 96." in one_attack


def test_a_run_that_predicts_one_class_is_known_from_its_confusion_matrix(tmp_path):
    study = tmp_path / "results" / "runs" / "finetune"
    paths = []
    for seed, confusion in enumerate(([[5, 0], [3, 0]], [[0, 5], [0, 3]], [[4, 1], [1, 2]])):
        accuracy = (confusion[0][0] + confusion[1][1]) / 8
        paths.append(_write_run(study / "random" / f"seed{seed}", "random",
                                {"n": 8, "accuracy": accuracy, "balanced_accuracy": 0.5, "confusion": confusion}, seed))
    paths.append(_write_run(study / "pretrained", "pretrained", {"n": 8, "accuracy": 0.75, "balanced_accuracy": 0.7,
                                                                 "confusion": [[4, 1], [1, 2]]}))
    runs = run_table(paths)
    assert list(runs.predicted_classes) == [1, 1, 2, 2]
    assert collapsed_counts(runs) == {"random": (2, 3)}
    table = aggregate(runs)
    assert "predicted_classes" not in table  # the study table keeps its columns
    text = compact(table, one_class=collapsed_counts(runs))
    assert "one class" in _columns(text) and "2 of 3 runs" in text
    # runs recorded without a confusion matrix: a balanced accuracy of 0.5 (two classes, one predicted)
    old = runs.drop(columns=["predicted_classes"])
    assert collapsed_counts(old) == {"random": (3, 3)}
