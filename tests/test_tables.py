import pandas as pd
import pytest

from frelon.report.tables import add_scaling


def test_speedup_and_efficiency_are_against_one_process_doing_the_same_work():
    table = pd.DataFrame({
        "experiment": ["w1", "w2", "w4", "other"],
        "arch": ["resnet18"] * 3 + ["resnet34"], "init": ["random"] * 4, "batch_size": [32] * 4,
        "world_size": [1, 2, 4, 2], "epoch_seconds": [10.0, 5.5, 3.2, 7.0],
    })
    out = add_scaling(table).set_index("experiment")
    assert out.loc["w2", "speedup"] == pytest.approx(10 / 5.5, abs=1e-3)
    assert out.loc["w4", "efficiency"] == pytest.approx(10 / 3.2 / 4, abs=1e-3)
    assert pd.isna(out.loc["other", "speedup"])  # no one-process run of resnet34: the cell stays empty


def test_no_scaling_columns_without_a_one_process_run():
    table = pd.DataFrame({"arch": ["resnet18"], "init": ["random"], "batch_size": [8], "world_size": [2],
                          "epoch_seconds": [1.0]})
    assert "speedup" not in add_scaling(table)
