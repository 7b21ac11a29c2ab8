import pandas as pd
import pytest

from frelon.report.document import build
from frelon.report.figures import scaling_plot, study_curves


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


@pytest.mark.parametrize("with_claims", [True, False])
def test_the_report_lists_every_study_of_the_config_with_its_table_and_figures(tmp_path, with_claims):
    results = tmp_path / "results"
    (results / "tables").mkdir(parents=True)
    config = {"studies": {"finetune": {"seeds": [0, 1]}, "ingredients": {}, "detection": {}}}
    studies = {}
    for study in config["studies"]:
        (results / "tables" / f"{study}.md").write_text(f"| experiment |\n|:--|\n| {study}-row |\n")
        studies[study] = {"table": str(results / "tables" / f"{study}.md"),
                          "figures": [str(results / "figures" / f"{study}.png")]}
    (results / "claims.md").write_text("| claim | verdict |\n|:--|:--|\n| x | supported |\n")
    text = build(results / "report.md", config, studies, str(results / "claims.md") if with_claims else None,
                 checkpointing=None, adversarial=None)
    for study in config["studies"]:
        assert f"## Study: {study}" in text and f"| {study}-row |" in text
        assert f"](figures/{study}.png)" in text   # links that work from results/
    assert "Seeds: 0, 1." in text
    assert ("| x | supported |" in text) == with_claims
    assert (results / "report.md").read_text() == text
