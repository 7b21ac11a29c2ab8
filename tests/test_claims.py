import math

import pandas as pd
import pytest

from frelon.errors import FrelonError
from frelon.report.claims import check, markdown, verdict


def _study(rows):
    """A study table as `frelon table` writes it: mean, sample std and n per experiment."""
    return pd.DataFrame([{"experiment": e, "test_accuracy": m, "test_accuracy_std": s, "n": n, "runs": runs,
                          "diverged": d, "missing": 0} for e, m, s, n, runs, d in rows])


def _claim(a, b, relation="higher", metric="test_accuracy", table="finetune"):
    return {"claim": f"{a} vs {b}", "metric": metric, "relation": relation,
            "a": {"table": table, "where": {"experiment": a}}, "b": {"table": table, "where": {"experiment": b}}}


TABLES = {"finetune": _study([("pretrained", 0.90, 0.01, 3, 3, 0), ("random", 0.70, 0.02, 3, 3, 0),
                              ("noisy", 0.72, 0.10, 3, 3, 0), ("single", 0.95, None, 1, 1, 0),
                              ("gone", None, None, 0, 3, 3), ("safe", 0.8, 0.0, 3, 3, 0)])}


def test_a_clear_difference_is_supported_with_its_spread():
    row = check([_claim("pretrained", "random")], TABLES).iloc[0]
    assert row.verdict == "supported"
    assert row.difference == pytest.approx(0.2)
    assert row.spread == pytest.approx(2 * math.sqrt(0.01 ** 2 / 3 + 0.02 ** 2 / 3), abs=1e-4)
    assert (row.a_n, row.b_n) == (3, 3)


def test_the_opposite_claim_is_contradicted_and_noise_cannot_tell():
    out = check([_claim("random", "pretrained"), _claim("noisy", "random")], TABLES)
    assert list(out.verdict) == ["contradicted", "within spread"]


def test_lower_and_not_lower_relations():
    out = check([_claim("random", "pretrained", "lower"), _claim("noisy", "random", "not_lower"),
                 _claim("random", "pretrained", "not_lower")], TABLES)
    assert list(out.verdict) == ["supported", "supported", "contradicted"]


def test_one_measurement_gives_a_direction_not_evidence_and_a_missing_side_no_data():
    out = check([_claim("single", "random"), _claim("random", "single"), _claim("gone", "random")], TABLES)
    assert list(out.verdict) == ["holds once", "fails once", "no data"]
    assert pd.isna(out.iloc[2].difference)
    assert "missing" in markdown(out)


def test_divergence_is_a_fraction_of_the_runs_that_were_not_missing():
    out = check([_claim("safe", "gone", "lower", metric="diverged_fraction")], TABLES).iloc[0]
    assert (out.a_value, out.b_value) == (0.0, 1.0) and out.verdict == "supported"


def test_other_tables_select_rows_by_their_columns():
    memory = pd.DataFrame({"model": ["resnet18"] * 2, "policy": ["none", "all"], "saved_activation_mb": [27.7, 5.1],
                           "step_ms": [136.0, 180.0]})
    claims = [{"claim": "checkpointing saves memory", "metric": "saved_activation_mb", "relation": "lower",
               "a": {"table": "checkpointing", "where": {"model": "resnet18", "policy": "all"}},
               "b": {"table": "checkpointing", "where": {"model": "resnet18", "policy": "none"}}},
              {"claim": "and costs time", "metric": "step_ms",
               "a": {"table": "checkpointing", "where": {"policy": "all"}},
               "b": {"table": "checkpointing", "where": {"policy": "none"}}}]
    assert list(check(claims, {"checkpointing": memory}).verdict) == ["holds once", "holds once"]


def test_a_bad_claim_names_what_to_fix():
    with pytest.raises(FrelonError, match="no column 'accuracy'"):
        check([_claim("pretrained", "random", metric="accuracy")], TABLES)
    with pytest.raises(FrelonError, match="4 rows match"):
        check([{"claim": "x", "metric": "test_accuracy", "a": {"table": "finetune", "where": {"n": 3}},
                "b": {"table": "finetune", "where": {"experiment": "random"}}}], TABLES)
    with pytest.raises(FrelonError, match="relation 'bigger'"):
        check([_claim("pretrained", "random", relation="bigger")], TABLES)


def test_verdict_thresholds_are_the_spread():
    assert verdict(0.11, 0.1, "higher") == "supported"
    assert verdict(0.09, 0.1, "higher") == "within spread"
    assert verdict(-0.09, 0.1, "not_lower") == "supported"
    assert verdict(-0.11, 0.1, "not_lower") == "contradicted"


def test_numbers_select_numbers_whatever_the_csv_made_of_them():
    attacks = pd.DataFrame({"model": ["pretrained"] * 3, "attack": ["pgd"] * 3, "eps_255": [0.0, 2.0, 8.0],
                            "accuracy": [0.9, 0.3, 0.0], "n": [40] * 3})
    claim = {"claim": "attacks succeed at small eps", "metric": "accuracy", "relation": "lower",
             "a": {"table": "adversarial", "where": {"model": "pretrained", "attack": "pgd", "eps_255": 2}},
             "b": {"table": "adversarial", "where": {"model": "pretrained", "attack": "pgd", "eps_255": 0}}}
    row = check([claim], {"adversarial": attacks}).iloc[0]
    assert (row.a_value, row.b_value, row.verdict) == (0.3, 0.9, "supported")
    spread = 2 * math.sqrt(0.3 * 0.7 / 39 + 0.9 * 0.1 / 39)   # binomial, over the 40 images on each side
    assert row.spread == pytest.approx(spread, abs=1e-4)


def test_a_side_may_read_another_column_of_its_row():
    patch = pd.DataFrame({"model": ["pretrained"] * 2, "area": [0.01, 0.05], "success": [0.2, 0.9],
                          "noise_success": [0.05, 0.1], "n": [50, 50]})
    claim = {"claim": "the patch beats noise", "metric": "success",
             "a": {"table": "patch", "where": {"area": 0.05}},
             "b": {"table": "patch", "where": {"area": 0.05}, "metric": "noise_success"}}
    row = check([claim], {"patch": patch}).iloc[0]
    assert (row.a_value, row.b_value, row.verdict) == (0.9, 0.1, "supported")
    assert row.b.endswith("noise_success")


def test_a_test_score_carries_the_sampling_of_its_test_images():
    # two seeds each that agree exactly, one test image apart out of 75: not a certain difference
    table = pd.DataFrame([{"experiment": e, "test_accuracy": m, "test_accuracy_std": 0.0, "n": 2, "n_test": 75,
                           "runs": 2, "diverged": 0, "missing": 0} for e, m in (("batch", 0.64), ("none", 0.6533))])
    row = check([_claim("batch", "none", table="ingredients")], {"ingredients": table}).iloc[0]
    assert row.verdict == "within spread"
    assert row.spread == pytest.approx(2 * math.sqrt(0.64 * 0.36 / 75 + 0.6533 * 0.3467 / 75), abs=1e-4)
