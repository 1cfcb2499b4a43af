"""Metrics against hand-computed values (no scipy/sklearn in the venv)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dtvg_engine.train.metrics import METRICS, accuracy, compute, f1, macro_f1, mcc, pearson, score, spearman
from dtvg_engine.train.tasks import get_task

# tp=2 (rows 0, 4), fp=1 (row 1), fn=1 (row 3), tn=1 (row 2)
BINARY_PREDS = [1, 1, 0, 0, 1]
BINARY_GOLDS = [1, 0, 0, 1, 1]


def test_accuracy() -> None:
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    assert accuracy(np.array([2, 2]), np.array([2, 2])) == 1.0


def test_binary_f1() -> None:
    assert f1(BINARY_PREDS, BINARY_GOLDS) == pytest.approx(4 / 6)  # 2tp / (2tp + fp + fn)


def test_macro_f1() -> None:
    golds = [0, 0, 1, 1, 2, 2]
    preds = [0, 1, 1, 1, 2, 0]
    # class 0: tp1 fp1 fn1 -> 1/2; class 1: tp2 fp1 fn0 -> 4/5; class 2: tp1 fp0 fn1 -> 2/3
    assert macro_f1(preds, golds) == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)


def test_mcc_binary_and_multiclass() -> None:
    # (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (2 - 1) / sqrt(3*3*2*2)
    assert mcc(BINARY_PREDS, BINARY_GOLDS) == pytest.approx(1 / 6)
    assert mcc([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)
    assert mcc([0, 1, 2, 2], [0, 1, 2, 2]) == pytest.approx(1.0)
    # 3 classes, n=6, correct=4, gold totals (2,2,2), pred totals (2,3,1) from the macro-F1 case:
    # (4*6 - (4+6+2)) / sqrt((36 - (4+9+1)) * (36 - 12)) = 12 / sqrt(22*24)
    assert mcc([0, 1, 1, 1, 2, 0], [0, 0, 1, 1, 2, 2]) == pytest.approx(12 / math.sqrt(22 * 24))


def test_pearson() -> None:
    # deviations (-1, 0, 1) and (-7/3, -1/3, 8/3): 5 / sqrt(2 * 114/9)
    assert pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(5 / math.sqrt(2 * 114 / 9))
    assert pearson([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)


def test_spearman_averages_tied_ranks() -> None:
    # ranks (1, 2.5, 2.5, 4) vs (1, 2, 3, 4): 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert spearman([1, 10, 100, 1000], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(1.0)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_empty_input_scores_zero(name: str) -> None:
    assert METRICS[name]([], []) == 0.0


@pytest.mark.parametrize("name", ["mcc", "pearson", "spearman"])
def test_constant_predictions_score_zero_not_nan(name: str) -> None:
    assert METRICS[name]([1, 1, 1, 1], [0, 1, 0, 1]) == 0.0
    assert METRICS[name]([0, 0, 0], [0, 0, 0]) == 0.0


def test_f1_without_any_positive_is_zero() -> None:
    assert f1([0, 0, 0], [0, 0, 0]) == 0.0


def test_length_mismatch_is_a_bug() -> None:
    with pytest.raises(ValueError):
        accuracy([1, 0], [1])


def test_compute_returns_the_tasks_metrics_as_plain_floats() -> None:
    scores = compute(get_task("cb"), np.array([0, 1, 2, 2]), [0, 1, 2, 1])
    assert list(scores) == ["accuracy", "macro_f1"]
    assert all(type(value) is float for value in scores.values())
    assert scores["accuracy"] == 0.75
    stsb = compute(get_task("stsb"), [0.5, 2.0, 4.5], [0.0, 2.4, 5.0])
    assert set(stsb) == {"pearson", "spearman"} and stsb["spearman"] == pytest.approx(1.0)


def test_score_is_the_mean_of_the_tasks_metrics() -> None:
    """Checkpoints are chosen by it: on MRPC, F1 alone would crown the constant "equivalent"."""
    mrpc = get_task("mrpc")
    always_yes = compute(mrpc, [1] * 4, [1, 0, 0, 1])  # accuracy 0.5, F1 2/3
    assert score(mrpc, always_yes) == pytest.approx((0.5 + 2 / 3) / 2)
    assert score(get_task("stsb"), {"pearson": 0.2, "spearman": 0.4}) == pytest.approx(0.3)
    assert score(get_task("cola"), {"mcc": 0.1, "accuracy": 0.9}) == 0.1  # the authors score CoLA by MCC
    assert score(get_task("rte"), {"accuracy": 0.7}) == 0.7
