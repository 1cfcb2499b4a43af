"""Evaluation in length-sorted batches (issue 13): the predictions and metrics of data order, with less
padding. In data order every batch is padded to its longest member, which with whole inputs is most of
the work; sorted by length, a batch is padded to about its own members' length."""

from __future__ import annotations

import pytest

from dtvg_engine.train import metrics
from dtvg_engine.train.data import load_splits
from dtvg_engine.train.prompts import sample_init
from dtvg_engine.train.scoring import Batch, LabelScorer
from dtvg_engine.train.tasks import get_task
from dtvg_engine.train.training import evaluate, predictions


class WidthScorer(LabelScorer):
    """A real scorer that also counts the padding of every batch it collates."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.padding = 0

    def collate(self, items) -> Batch:
        batch = super().collate(items)
        self.padding += int((batch.attention_mask == 0).sum())
        return batch


def scorer_and_items(backbone, task_name: str, data_dir):
    rows = load_splits(task_name, data_dir, seed=0, max_eval=200).validation[:120]
    scorer = WidthScorer.fitted(backbone, get_task(task_name), None, rows)  # whole inputs, up to 256
    return scorer, scorer.encode(rows)


@pytest.mark.parametrize("model", ["llama", "t5"])
@pytest.mark.parametrize("task_name", ["rte", "mrpc", "cb"])
def test_sorted_batches_give_data_order_predictions_with_less_padding(model, task_name, request, data_dir):
    backbone = request.getfixturevalue(model)
    scorer, items = scorer_and_items(backbone, task_name, data_dir)
    prompt = sample_init(backbone, 8, 0)

    in_data_order = predictions(scorer, prompt, items, 8, order="data")
    data_padding, scorer.padding = scorer.padding, 0
    sorted_order = predictions(scorer, prompt, items, 8, order="length")

    assert sorted_order == in_data_order  # same label for every example, in data order
    assert scorer.padding < data_padding / 3  # a fraction of the padding at the same batch size
    golds = [gold for _, gold in items]  # the default evaluation, any batch size: the same metrics
    assert evaluate(scorer, prompt, items, 64) == metrics.compute(scorer.task, in_data_order, golds)


def test_sorted_regression_scores_agree_to_rounding(llama, data_dir):
    """stsb predicts an expected score, a float: a batch's shape moves it by float rounding only (as
    between two batch sizes in data order), far below any metric's resolution."""
    scorer, items = scorer_and_items(llama, "stsb", data_dir)
    prompt = sample_init(llama, 8, 0)
    in_data_order = predictions(scorer, prompt, items, 8, order="data")
    sorted_order = predictions(scorer, prompt, items, 32, order="length")
    assert max(abs(a - b) for a, b in zip(in_data_order, sorted_order, strict=True)) < 1e-5
    sorted_metrics = evaluate(scorer, prompt, items, 32)
    for name, value in evaluate(scorer, prompt, items, 8, order="data").items():
        assert sorted_metrics[name] == pytest.approx(value, abs=1e-5)
