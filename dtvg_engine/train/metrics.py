"""GLUE/SuperGLUE-style metrics as small pure functions over predictions and gold labels, and the
generation metrics (BLEU, ROUGE) through sacrebleu and rouge-score.

Values stay in their natural ranges ([0, 1] for accuracy and F1, [-1, 1] for correlations) as plain
floats. Degenerate inputs (empty, one class only, constant predictions) score 0.0 instead of NaN, so a
bad early checkpoint never poisons "best metric" comparisons or JSON output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from dtvg_engine.train.tasks import Task

Values = Sequence[float] | np.ndarray


def _arrays(preds: Values, golds: Values) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as flat numpy arrays of equal length (a mismatch is a caller bug)."""
    p, g = np.asarray(preds).ravel(), np.asarray(golds).ravel()
    if p.shape != g.shape:
        raise ValueError(f"{len(p)} predictions for {len(g)} gold labels")
    return p, g


def _safe_ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def accuracy(preds: Values, golds: Values) -> float:
    """Fraction of predictions equal to the gold label."""
    p, g = _arrays(preds, golds)
    return _safe_ratio(np.sum(p == g), len(g))


def _f1_of_class(p: np.ndarray, g: np.ndarray, cls: float) -> float:
    """F1 of one class against the rest: 2·TP / (2·TP + FP + FN)."""
    tp = np.sum((p == cls) & (g == cls))
    fp = np.sum((p == cls) & (g != cls))
    fn = np.sum((p != cls) & (g == cls))
    return _safe_ratio(2 * tp, 2 * tp + fp + fn)


def f1(preds: Values, golds: Values) -> float:
    """Binary F1 with class 1 as the positive class (MRPC, QQP)."""
    return _f1_of_class(*_arrays(preds, golds), 1)


def macro_f1(preds: Values, golds: Values) -> float:
    """Unweighted mean of per-class F1 over every class seen in golds or predictions (CB)."""
    p, g = _arrays(preds, golds)
    classes = np.union1d(p, g)
    if len(classes) == 0:
        return 0.0
    return float(np.mean([_f1_of_class(p, g, cls) for cls in classes]))


def mcc(preds: Values, golds: Values) -> float:
    """Matthews correlation (multi-class form; equals the binary formula for two classes) (CoLA)."""
    p, g = _arrays(preds, golds)
    classes = np.union1d(p, g)
    confusion = (g[:, None] == classes[None, :]).T.astype(float) @ (p[:, None] == classes[None, :])
    n = confusion.sum()
    correct = np.trace(confusion)
    gold_totals, pred_totals = confusion.sum(axis=1), confusion.sum(axis=0)
    numerator = correct * n - gold_totals @ pred_totals
    denominator = np.sqrt((n**2 - pred_totals @ pred_totals) * (n**2 - gold_totals @ gold_totals))
    return _safe_ratio(numerator, denominator)


def pearson(preds: Values, golds: Values) -> float:
    """Pearson correlation; 0.0 when either side is constant (STS-B)."""
    p, g = _arrays(preds, golds)
    if len(p) == 0:
        return 0.0
    p, g = p.astype(float) - np.mean(p), g.astype(float) - np.mean(g)
    return _safe_ratio(p @ g, np.sqrt((p @ p) * (g @ g)))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks where tied values share the mean of the ranks they span."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=float)
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(preds: Values, golds: Values) -> float:
    """Spearman rank correlation: Pearson over average ranks, so ties are handled (STS-B)."""
    p, g = _arrays(preds, golds)
    return pearson(_average_ranks(p), _average_ranks(g))


METRICS: dict[str, Callable[[Values, Values], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "macro_f1": macro_f1,
    "mcc": mcc,
    "pearson": pearson,
    "spearman": spearman,
}


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def text_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus BLEU (sacrebleu's defaults, every reference of a row) and ROUGE-1/2/L F-measure (rouge-score,
    Porter stemming; with several references a row counts its best, as `score_multi` picks it), averaged
    over rows; all as fractions. rouge-score stems with nltk's Porter stemmer, which needs no download."""
    # Imported here: rouge-score imports all of nltk (half a second), which only generation runs need.
    import sacrebleu
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference lists")
    if not predictions:
        return dict.fromkeys(("bleu", *ROUGE_TYPES), 0.0)
    width = max(len(refs) for refs in references)
    streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]
    bleu = sacrebleu.corpus_bleu(list(predictions), streams).score / 100
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    rows = [scorer.score_multi(list(refs), pred) for pred, refs in zip(predictions, references, strict=True)]
    rouge = {name: float(np.mean([row[name].fmeasure for row in rows])) for name in ROUGE_TYPES}
    return {"bleu": float(bleu), **rouge}


def compute(task: Task, preds: Sequence, golds: Sequence) -> dict[str, float]:
    """Every metric the task reports, by name, as plain floats (a generation task's golds are each row's
    references)."""
    if task.generation:
        return text_metrics(preds, golds)
    return {name: METRICS[name](preds, golds) for name in task.metrics}


def score(task: Task, values: dict[str, float]) -> float:
    """The task's score from its computed metrics: the mean of `task.score_metrics`.

    Checkpoints are chosen by it, as the authors' trainer chooses by the mean of a task's metrics
    (MRPC/QQP accuracy and F1, STS-B Pearson and Spearman, CB accuracy and macro-F1): with F1 alone,
    always answering "equivalent" would be MRPC's best checkpoint.
    """
    return sum(values[name] for name in task.score_metrics) / len(task.score_metrics)


def constant_score(task: Task, golds: Values) -> float:
    """The best `score` a constant prediction gets against `golds`: the floor a model that learned
    nothing but the label prior reaches (the majority class for accuracy). For regression the constants
    tried are the label words' values."""
    return max(score(task, compute(task, [label] * len(golds), golds)) for label in range(task.num_labels))
