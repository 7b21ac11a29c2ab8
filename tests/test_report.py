import datetime
import json

import pandas as pd
import pytest

from frelon.report.claims import check, markdown
from frelon.report.document import build, header
from frelon.report.figures import curves_figure, scaling_plot, study_curves

DATE = datetime.datetime(2026, 3, 1, 9, 30, tzinfo=datetime.timezone.utc)
HOST = {"cpu": "Test CPU 3000", "cores": 8, "gpus": []}


def _run(folder, losses, lr):
    folder.mkdir(parents=True)
    pd.DataFrame({"epoch": range(1, len(losses) + 1), "train_loss": losses,
                  "val_accuracy": [0.5 + 0.1 * i for i in range(len(losses))]}).to_csv(folder / "history.csv", index=False)
    pd.DataFrame({"step": range(1, len(lr) + 1), "lr": lr}).to_csv(folder / "iterations.csv", index=False)
    return folder


def test_study_curves_draw_every_experiment_and_a_missing_run_is_left_out(tmp_path):
    runs = {"a": [_run(tmp_path / "a" / "seed0", [1.0, 0.5], [0.1, 0.2]), _run(tmp_path / "a" / "seed1", [1.2, 0.4],
                                                                                [0.1, 0.2])],
            "b": [_run(tmp_path / "b" / "seed0", [0.9, 0.8], [0.05, 0.05]), tmp_path / "b" / "seed1"]}
    study_curves("demo", runs, tmp_path / "out" / "demo.png")
    assert (tmp_path / "out" / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((tmp_path / "out").iterdir()) == [tmp_path / "out" / "demo.png"]  # no temporary file left


def test_a_scaling_figure_needs_a_speedup(tmp_path):
    table = pd.DataFrame({"experiment": ["w1", "w2"], "world_size": [1, 2], "speedup": [1.0, 1.8],
                          "speedup_std": [0.01, 0.05], "efficiency": [1.0, 0.9], "efficiency_std": [None, None]})
    assert scaling_plot(table, "scaling", tmp_path / "s.png") and (tmp_path / "s.png").exists()
    assert not scaling_plot(table.drop(columns=["speedup"]), "scaling", tmp_path / "t.png")
    assert not (tmp_path / "t.png").exists()


def _tables(results, config):
    """A study table and runs table per study of `config`, as `frelon table` writes them."""
    (results / "tables" / "runs").mkdir(parents=True)
    studies = {}
    for study in config["studies"]:
        pd.DataFrame({"experiment": [f"{study}-row"], "arch": ["resnet18"], "n": [2], "test_accuracy": [0.61234],
                      "test_accuracy_std": [0.0123]}).to_csv(results / "tables" / f"{study}.csv", index=False)
        pd.DataFrame({"experiment": [f"{study}-row"] * 2, "status": ["scored"] * 2, "predicted_classes": [2, 2],
                      "test_accuracy": [0.6, 0.62]}).to_csv(results / "tables" / "runs" / f"{study}.csv", index=False)
        studies[study] = {"table": str(results / "tables" / f"{study}.csv"),
                          "runs": str(results / "tables" / "runs" / f"{study}.csv"),
                          "figures": [str(results / "figures" / f"{study}.png")]}
    return studies


@pytest.mark.parametrize("with_claims", [True, False])
def test_the_report_lists_every_study_of_the_config_with_its_table_and_figures(tmp_path, with_claims):
    results = tmp_path / "results"
    config = _config(studies={"finetune": {"dataset": "hornet", "seeds": [0, 1], "experiments": {"a": {}}},
                              "ingredients": {"dataset": "hornet", "experiments": {"a": {}}},
                              "detection": {"dataset": "voc", "experiments": {"a": {}}}})
    studies = _tables(results, config)
    (results / "claims.md").write_text("| claim | verdict |\n|:--|:--|\n| x | supported |\n")
    text = build(results / "report.md", config, studies, str(results / "claims.md") if with_claims else None,
                 checkpointing=None, adversarial=None, date=DATE, host=HOST)
    for study in config["studies"]:
        assert f"## Study: {study}" in text and f"| {study}-row " in text
        assert f"](figures/{study}.png)" in text   # links that work from results/
        assert f"[tables/{study}.csv](tables/{study}.csv)" in text  # the full table, a click away
    assert "Seeds: 0, 1." in text
    assert ("| x | supported |" in text) == with_claims
    assert (results / "report.md").read_text() == text


def _config(**more):
    return {"datasets": {"hornet": {"source": "raw/hornet", "image_size": 224, "classes": ["a", "b"]}},
            "detection_data": {"voc": {"archives": [{"url": "http://host/VOCtrainval_06-Nov-2007.tar"}],
                                       "train": "2007:trainval", "val": "2007:test"}},
            "studies": {"finetune": {"dataset": "hornet", "seeds": [0, 1], "experiments": {"a": {}}},
                        "detection": {"dataset": "voc", "experiments": {"voc": {}}}}, **more}


def test_the_header_names_the_config_the_data_the_machine_and_the_date_and_defines_the_spread(tmp_path):
    lines = header(_config(), [str(tmp_path / "config" / "mine.yaml")], ["seed=1"], date=DATE, host=HOST)
    text = "\n".join(lines)
    assert "- **Config**: `" in text and "mine.yaml` with `--config seed=1`" in text
    assert ("- **Data**: as configured: hornet (raw/hornet; 224 px), "
            "voc (VOCtrainval_06-Nov-2007.tar; train 2007:trainval; val 2007:test)") in text
    assert "- **Machine**: Test CPU 3000 (8 cores), no GPU (the host that built this report" in text
    assert "- **Date**: 2026-03-01 09:30 UTC" in text
    assert text.count("±") == 1 and "± is the standard deviation over seeds" in text
    demo = _config(demo={"pretrain": {"dataset": "hornet"}}, datasets={"hornet": {"source": "data/demo/hornet", "image_size": 48}})
    assert "- **Data**: generated by the demo" in "\n".join(header(demo, ["config/demo.yaml"], date=DATE, host=HOST))
    assert "- **Config**: `config/demo.yaml`\n" in "\n".join(header(demo, ["config/demo.yaml"], date=DATE, host=HOST))


def test_the_machine_the_runs_recorded_comes_before_the_host_and_the_devices_are_named(tmp_path):
    run = tmp_path / "runs" / "finetune" / "a"
    run.mkdir(parents=True)
    (run / "spec.json").write_text(json.dumps({"device": "cuda"}))
    (run / "metrics.json").write_text(json.dumps({"machine": {"cpu": "Big CPU", "cores": 64,
                                                              "gpus": ["NVIDIA H100", "NVIDIA H100"]}}))
    text = "\n".join(header(_config(), ["c.yaml"], runs={"finetune": [str(run)]}, measured_on=["NVIDIA H200"],
                            date=DATE, host=HOST))
    assert "Big CPU (64 cores), 2 × NVIDIA H100 (recorded by the runs)" in text and "Test CPU" not in text
    assert "checkpointing study measured on NVIDIA H200" in text and "the runs' device: cuda" in text


def test_runs_that_predicted_one_class_are_flagged_in_their_table_and_the_header(tmp_path):
    results = tmp_path / "results"
    config = _config()
    studies = _tables(results, config)
    pd.DataFrame({"experiment": ["finetune-row"] * 2, "status": ["scored"] * 2, "predicted_classes": [1, 2],
                  "test_accuracy": [0.5, 0.62]}).to_csv(studies["finetune"]["runs"], index=False)
    text = build(results / "report.md", config, studies, date=DATE, host=HOST)
    assert "- **Runs that predicted one class**: finetune: finetune-row (1 of 2)" in text
    assert "| one class" in text and "1 of 2 runs" in text
    assert "**Runs that predicted one class** (every test image given the same class" in text


def _claims_tables():
    finetune = pd.DataFrame([{"experiment": e, "test_accuracy": m, "test_accuracy_std": s, "n": 3, "runs": 3,
                              "diverged": 0, "missing": 0}
                             for e, m, s in (("pretrained", 0.9, 0.01), ("random", 0.5, 0.0), ("head", 0.5, 0.0))])
    runs = pd.DataFrame([{"experiment": e, "seed": seed, "status": "scored", "predicted_classes": k}
                         for e, k in (("pretrained", 2), ("random", 1), ("head", 2)) for seed in range(3)])
    return {"finetune": finetune}, {"finetune": runs}


def _claim(a, b, table="finetune", metric="test_accuracy"):
    return {"claim": f"{a} beats {b}", "metric": metric, "a": {"table": table, "where": {"experiment": a}},
            "b": {"table": table, "where": {"experiment": b}}}


def test_a_claim_resting_on_runs_that_predicted_one_class_is_not_evidence():
    tables, runs = _claims_tables()
    out = check([_claim("pretrained", "random"), _claim("pretrained", "head")], tables, runs)
    assert list(out.verdict) == ["not evidence", "supported"]
    assert (out.b_one_class.tolist(), out.a_one_class.tolist()) == ([3, 0], [0, 0])
    shown = markdown(out)
    assert "not evidence" in shown and "b (experiment=random): 3 of 3 runs predicted one class only" in shown
    assert list(check([_claim("pretrained", "random")], tables).verdict) == ["supported"]  # no runs table: unknown


def test_equal_numbers_are_no_difference_and_the_spread_of_a_difference_is_not_written_with_plus_minus():
    tables, _ = _claims_tables()
    out = check([_claim("head", "random"), _claim("pretrained", "head")], tables)
    assert list(out.verdict) == ["no difference", "supported"]
    shown = markdown(out)
    assert "+0 (spread 0)" in shown and "+0.4 (spread 0.0115)" in shown
    assert "within spread" not in shown
    assert "pretrained: 0.9 ± 0.01 (n=3)" in shown  # ± only for the spread over seeds


def test_a_share_of_test_images_has_its_per_image_spread_worded_as_such():
    attacks = pd.DataFrame({"model": ["pretrained"] * 2, "attack": ["pgd"] * 2, "eps_255": [0, 2],
                            "accuracy": [0.9166667, 0.3125], "n": [96, 96]})
    claim = {"claim": "PGD brings the accuracy down", "metric": "accuracy", "relation": "lower",
             "a": {"table": "adversarial", "where": {"attack": "pgd", "eps_255": 2}},
             "b": {"table": "adversarial", "where": {"attack": "pgd", "eps_255": 0}}}
    shown = markdown(check([claim], {"adversarial": attacks}))
    assert "0.312 (a share of 96 images; per-image sd 0.466)" in shown
    assert "±" not in shown


def test_curves_are_small_multiples_one_row_per_experiment_with_whole_epochs(tmp_path):
    runs = {"a": [_run(tmp_path / "a" / "seed0", [1.0, 0.5], [0.1, 0.2]), _run(tmp_path / "a" / "seed1", [1.2, 0.4],
                                                                                [0.1, 0.2])],
            "b": [_run(tmp_path / "b" / "seed0", [0.9, 0.8], [0.05, 0.05])], "c": [tmp_path / "c" / "seed0"]}
    fig = curves_figure("demo", runs)
    axes = fig.get_axes()
    assert len(axes) == 3 * 3  # experiments x (training loss, validation, learning rate)
    assert [ax.get_ylabel() for ax in axes[::3]] == ["a\n(n=2)", "b", "c\n(no run)"]
    epoch_axes = [ax for ax in axes if ax.get_xlabel() == "epoch"]
    assert len(epoch_axes) == 2
    fig.canvas.draw()
    for ax in axes:  # epochs and steps: whole numbers only (2 epochs would otherwise tick at 1.2, 1.4, ...)
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
