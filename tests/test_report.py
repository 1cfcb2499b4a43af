"""The study report: the group trajectory, and the constant floor read through the task registry."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from dtvg_engine.runs.runfolder import create_run
from dtvg_engine.studies.report import constant_score, trajectory


def test_trajectory_keeps_the_first_step_and_every_change() -> None:
    steps = [(1, ("qnli", "mnli")), (2, ("qnli", "mnli")), (3, ("qnli",)), (4, ("qnli",)), (5, ())]
    assert trajectory(steps) == [(1, ("qnli", "mnli")), (3, ("qnli",)), (5, ())]


def test_a_reranked_group_is_no_change() -> None:
    """Events list the group in ranking order; the same sources in another order are the same group."""
    assert trajectory([(1, ("a", "b")), (2, ("b", "a")), (3, ("b",))]) == [(1, ("a", "b")), (3, ("b",))]


def _run(runs_dir: Path, data_dir: Path, **config) -> Path:
    base = {"stage": "stage2", "method": "pt", "seed": 0, "k_shot": 16, "max_eval": 40}
    return create_run(runs_dir, "stage2", "x", {**base, "data_dir": str(data_dir), **config})


def test_constant_reads_a_label_kept_in_another_field(runs_dir: Path, data_dir: Path) -> None:
    """trec keeps its label in `coarse_label`; the constant column used to raise KeyError 'label'."""
    from dtvg_engine.train.data import load_splits

    run_dir = _run(runs_dir, data_dir, target="trec")
    test = load_splits("trec", data_dir, seed=0, k_shot=16, max_eval=40).test
    majority = Counter(row["coarse_label"] for row in test).most_common(1)[0][1]
    assert constant_score(run_dir) == pytest.approx(majority / len(test))


def test_constant_is_the_best_constant_score_not_its_f1(runs_dir: Path, data_dir: Path) -> None:
    """MRPC's score is the mean of accuracy and F1, so "always equivalent" no longer scores its F1."""
    from dtvg_engine.train import metrics, tasks
    from dtvg_engine.train.data import load_splits

    mrpc = tasks.get_task("mrpc")
    golds = [row["label"] for row in load_splits("mrpc", data_dir, seed=0, k_shot=16, max_eval=40).test]
    always_yes = metrics.compute(mrpc, [1] * len(golds), golds)
    assert constant_score(_run(runs_dir, data_dir, target="mrpc")) == pytest.approx(
        max(metrics.score(mrpc, metrics.compute(mrpc, [c] * len(golds), golds)) for c in (0, 1))
    )
    assert constant_score(_run(runs_dir, data_dir, target="mrpc")) < always_yes["f1"]
