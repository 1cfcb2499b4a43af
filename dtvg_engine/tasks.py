"""The task registry: how each benchmark task becomes a short text-to-text problem.

Every task has an input template that ends in an answer cue ("Answer:") and one label word per label id.
The engine scores classification by ranking the label words' FIRST tokens at the answer position, so the
label words of one task must start with pairwise-distinct tokens (checked in tests with the real
SmolLM2 tokenizer). STS-B is regression: its label words are the numbers zero..five (spelled out, because
SmolLM2 splits " 3" into " " + "3", which would give all six the same first token); training targets the
rounded score and evaluation predicts the probability-weighted mean of those values.

Generation tasks (WebNLG, CommonGen, E2E) are the third kind: no label words, but a target text the model
learns to write after the input, and every reference text of an input to score its greedy output against
(BLEU and ROUGE). A list field (WebNLG's triples, CommonGen's concepts) is joined into the template with the
task's separator.

Standard library only: the terminal UI imports this module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from string import Formatter
from typing import Any

from dtvg_engine.errors import UserError

HUB_PREFIX = "hf://"
"""How a data dir names a Hugging Face dataset instead of a local folder (`hf://owner/name`)."""

YES_NO = (" yes", " no")
NO_YES = (" no", " yes")


@dataclass(frozen=True)
class Task:
    """One task: where its data lives, how a row becomes model input, and how it is scored."""

    name: str
    path: str
    template: str
    label_words: tuple[str, ...]
    metrics: tuple[str, ...] = ("accuracy",)
    """Every metric a run reports."""
    scored_by: tuple[str, ...] | None = None
    """The metrics whose mean is the run's score (checkpoint choice, results tables), as the authors'
    code averages its `metric_names`; every reported metric when None."""
    size: str = "large"
    has_train: bool = True
    regression: bool = False
    label_field: str = "label"
    string_labels: Mapping[str, int] | None = field(default=None, hash=False)
    target_field: str | None = None
    """Generation tasks: the field holding the text to learn (None for classification and regression)."""
    references_field: str | None = None
    """Generation tasks whose evaluation rows list all their texts in one field (WebNLG's `references`);
    when None, the texts of the rows sharing `group_field` are the references."""
    group_field: str | None = None
    """Generation tasks with one row per reference: the field that names the input (CommonGen's
    concept_set_idx, E2E's meaning_representation)."""
    joins: Mapping[str, str] = field(default_factory=dict, hash=False)
    """How a list field is joined into the template: field name -> separator."""
    text_fields: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        # The fields a row must have are exactly the ones the template names; derive them once.
        names = tuple(dict.fromkeys(name for _, name, _, _ in Formatter().parse(self.template) if name))
        object.__setattr__(self, "text_fields", names)

    @property
    def score_metrics(self) -> tuple[str, ...]:
        """The metrics averaged into the score."""
        return self.scored_by or self.metrics

    @property
    def primary(self) -> str:
        """The score's name: the one metric, or e.g. "mean(accuracy,f1)" (`primary` of eval events)."""
        names = self.score_metrics
        return names[0] if len(names) == 1 else f"mean({','.join(names)})"

    @property
    def generation(self) -> bool:
        """Whether the task is scored on generated text (BLEU/ROUGE) rather than label words."""
        return self.target_field is not None

    @property
    def num_labels(self) -> int:
        """How many label words (classes, or score buckets for regression) the task has."""
        return len(self.label_words)


def _registry(*tasks: Task) -> dict[str, Task]:
    return {task.name: task for task in tasks}


GENERATION_METRICS = ("bleu", "rouge1", "rouge2", "rougeL")
"""Corpus BLEU (sacrebleu) and ROUGE-1/2/L F-measure (rouge-score), as fractions; the score is their mean."""


def _e2e(name: str) -> Task:
    """An E2E version: one row per (meaning representation, reference); no train split, so shots come
    from the official validation file (see data.py)."""
    return Task(
        name,
        f"_validation_only/{name}",
        "Data: {meaning_representation} Description:",
        (),
        metrics=GENERATION_METRICS,
        size="shots_from_validation",
        target_field="human_reference",
        group_field="meaning_representation",
    )


NLI3 = "{premise} Question: {hypothesis} Yes, no, or maybe? Answer:"

TASKS: dict[str, Task] = _registry(
    # --- large tasks: 1,000 train rows are held out as validation, the original dev set is the test set.
    Task("mnli", "mnli", NLI3, (" yes", " maybe", " no")),  # entailment, neutral, contradiction
    Task("snli", "snli", NLI3, (" yes", " maybe", " no")),
    Task(
        "qnli",
        "qnli",
        "Question: {question} Sentence: {sentence} Does the sentence answer the question? Answer:",
        YES_NO,  # entailment, not_entailment
    ),
    Task(
        "qqp",
        "qqp",
        "Question 1: {question1} Question 2: {question2} Same question? Answer:",
        NO_YES,  # not_duplicate, duplicate
        metrics=("accuracy", "f1"),
    ),
    Task("sst2", "sst2", "{sentence} Sentiment:", (" negative", " positive")),
    Task(
        "trec",
        "trec",
        "{text} Answer type:",
        (" abbreviation", " entity", " description", " person", " location", " number"),
        label_field="coarse_label",  # ABBR, ENTY, DESC, HUM, LOC, NUM
    ),
    Task("sst5", "sst5", "{text} Sentiment:", (" terrible", " bad", " okay", " good", " great")),
    Task("imdb", "imdb", "{text} Sentiment:", (" negative", " positive")),
    Task("ag_news", "ag_news", "{text} Topic:", (" world", " sports", " business", " science")),
    # --- small tasks: the original dev set is halved into validation and test.
    Task(
        "rte",
        "rte",
        "{sentence1} Question: {sentence2} True or false? Answer:",
        (" true", " false"),  # entailment, not_entailment
        size="small",
    ),
    Task(
        "cb",
        "cb",
        NLI3,
        (" yes", " no", " maybe"),  # entailment, contradiction, neutral
        metrics=("accuracy", "macro_f1"),
        size="small",
    ),
    Task(
        "mrpc",
        "mrpc",
        "Sentence 1: {sentence1} Sentence 2: {sentence2} Same meaning? Answer:",
        NO_YES,  # not_equivalent, equivalent
        metrics=("accuracy", "f1"),
        size="small",
    ),
    Task(
        "cola",
        "cola",
        "{sentence} Is this sentence grammatical? Answer:",
        NO_YES,  # unacceptable, acceptable
        metrics=("mcc", "accuracy"),
        scored_by=("mcc",),  # the authors' CoLA score is Matthews correlation alone
        size="small",
    ),
    Task(
        "stsb",
        "stsb",
        "Sentence 1: {sentence1} Sentence 2: {sentence2} Similarity from zero to five:",
        (" zero", " one", " two", " three", " four", " five"),
        metrics=("pearson", "spearman"),
        size="small",
        regression=True,
    ),
    Task(
        "wic",
        "wic",
        "{sentence1} {sentence2} Does '{word}' mean the same in both sentences? Answer:",
        NO_YES,  # False, True
        size="small",
    ),
    # --- evaluation-only tasks: no train split exists offline.
    Task(
        "boolq",
        "_validation_only/boolq",
        "{passage} Question: {question}? Answer:",
        NO_YES,  # False, True
        size="small",
        has_train=False,
    ),
    Task(
        "scitail",
        "_validation_only/scitail",
        "{premise} Question: {hypothesis} True or false? Answer:",
        (" true", " false"),
        size="small",
        has_train=False,
        string_labels={"entails": 0, "neutral": 1},
    ),
    # --- generation tasks: official train / validation / test files (test.jsonl has references).
    Task(
        "web_nlg",
        "web_nlg",
        "Triples: {input} Text:",  # each triple "subject | predicate | object", joined with " ; "
        (),
        metrics=GENERATION_METRICS,
        size="given",
        target_field="target",
        references_field="references",
        joins={"input": " ; "},
    ),
    Task(
        "common_gen",
        "common_gen",
        "Concepts: {concepts} Sentence:",  # the concepts joined with ", "
        (),
        metrics=GENERATION_METRICS,
        size="given",
        target_field="target",
        group_field="concept_set_idx",
        joins={"concepts": ", "},
    ),
    _e2e("e2e_nlg_cleaned"),
    _e2e("e2e_nlg"),
)


def get_task(name: str) -> Task:
    """The registered task called `name`; a UserError listing the known tasks otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise UserError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


def trainable_tasks() -> list[str]:
    """Names of the tasks that have a train split (usable as stage-1 or target tasks)."""
    return [name for name, task in TASKS.items() if task.has_train]


def render(task: Task, row: Mapping[str, Any]) -> str:
    """The model input for one row: the task template filled with the row's text fields (a list field
    joined with its separator, each item cleaned)."""
    return task.template.format(**{name: field_text(task, row, name) for name in task.text_fields})


def field_text(task: Task, row: Mapping[str, Any], name: str) -> str:
    """One text field as it enters the template: cleaned, a list field's items joined with its separator."""
    value = row[name]
    if name in task.joins and isinstance(value, list):
        return task.joins[name].join(clean(item) for item in value)
    return clean(value)


def clean(value: Any) -> str:
    """Text with surrounding whitespace removed, so templates join fields with exactly one space."""
    return str(value).strip()


def label_of(task: Task, row: Mapping[str, Any]) -> int | float:
    """The row's gold label: a float score for regression, else an integer label id."""
    value = row[task.label_field]
    try:
        if task.regression:
            return float(value)
        if task.string_labels is not None and isinstance(value, str):
            return task.string_labels[value]
        return int(value)
    except (KeyError, TypeError, ValueError):
        raise UserError(
            f"task {task.name!r}: {task.label_field}={value!r} is not a valid label; "
            f"expected {_expected_labels(task)}"
        ) from None


def _expected_labels(task: Task) -> str:
    """A human description of the labels a task accepts, for error messages."""
    if task.regression:
        return f"a number from 0 to {task.num_labels - 1}"
    if task.string_labels is not None:
        return "one of " + ", ".join(task.string_labels)
    return f"an integer from 0 to {task.num_labels - 1}"


def target_id(task: Task, label: int | float) -> int:
    """The index of the label word to train towards: the label itself, or the rounded score (half up)."""
    if task.regression:
        return min(max(math.floor(label + 0.5), 0), task.num_labels - 1)
    return int(label)
