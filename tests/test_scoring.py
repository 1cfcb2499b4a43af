"""The label-word scorer: our fast forward equals the straightforward one.

The reference computations below are deliberately naive: the soft prompt is concatenated in front of
every example's embeddings, the whole model runs, and the full-vocabulary logits are read at the answer
position. The scorer's shortcuts (prompt key/value cache shared by the batch, LM head only at the answer,
padding to the longest example) must not change the loss, the prompt gradient or the predictions.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dtvg_engine.errors import UserError
from dtvg_engine.train import tasks
from dtvg_engine.train.data import load_splits
from dtvg_engine.train.scoring import LabelScorer, covering_length

PROMPT_LENGTH = 6
ATOL = 1e-5


@pytest.fixture(scope="module")
def rte_rows(data_dir):
    splits = load_splits("rte", data_dir, seed=0, k_shot=16, max_eval=16)
    return splits.train[:6]


def _prompt(backbone, seed: int = 1) -> torch.Tensor:
    """A soft prompt on the scale of the embedding rows (random, seeded)."""
    generator = torch.Generator().manual_seed(seed)
    scale = backbone.model.get_input_embeddings().weight.std().item()
    return torch.randn(PROMPT_LENGTH, backbone.hidden_size, generator=generator) * scale


def _ours(scorer, prompt, batch):
    prompt = prompt.clone().requires_grad_(True)
    loss = scorer.loss(prompt, batch)
    loss.backward()
    return loss.detach(), prompt.grad


def _reference_causal(backbone, prompt, batch):
    """Prompt in front of every example, full forward, full-vocabulary logits at r + answer_index."""
    prompt = prompt.clone().requires_grad_(True)
    size, r = batch.input_ids.shape[0], prompt.shape[0]
    embeds = torch.cat([prompt[None].expand(size, -1, -1), backbone.embed(batch.input_ids)], dim=1)
    mask = torch.cat([torch.ones(size, r, dtype=torch.long), batch.attention_mask], dim=1)
    logits = backbone.model(inputs_embeds=embeds, attention_mask=mask).logits
    answer = logits[torch.arange(size), r + batch.answer_index]
    loss = F.cross_entropy(answer, batch.target_ids)
    loss.backward()
    return loss.detach(), prompt.grad


def _reference_seq2seq(backbone, prompt, batch):
    """Prompt in front of every encoder input; the label word's first token is the decoder's target."""
    prompt = prompt.clone().requires_grad_(True)
    size, r = batch.input_ids.shape[0], prompt.shape[0]
    embeds = torch.cat([prompt[None].expand(size, -1, -1), backbone.embed(batch.input_ids)], dim=1)
    mask = torch.cat([torch.ones(size, r, dtype=torch.long), batch.attention_mask], dim=1)
    loss = backbone.model(inputs_embeds=embeds, attention_mask=mask, labels=batch.target_ids[:, None]).loss
    loss.backward()
    return loss.detach(), prompt.grad


def test_batch_is_padded_to_its_longest_example(llama, rte_rows):
    scorer = LabelScorer(llama, tasks.get_task("rte"), max_input_tokens=64)
    items = scorer.encode(rte_rows)
    batch = scorer.collate(items)
    lengths = [len(ids) for ids, _ in items]
    assert len(set(lengths)) > 1, "the test needs examples of different lengths"
    assert batch.input_ids.shape == (len(items), max(lengths))
    assert batch.attention_mask.sum(1).tolist() == lengths
    assert batch.answer_index.tolist() == [n - 1 for n in lengths]
    words = [llama.tokenizer(w, add_special_tokens=False).input_ids[0] for w in (" true", " false")]
    assert batch.target_ids.tolist() == [words[int(row["label"])] for row in rte_rows]


def test_causal_loss_and_gradient_equal_straightforward_forward(llama, rte_rows):
    scorer = LabelScorer(llama, tasks.get_task("rte"), max_input_tokens=64)
    batch = scorer.collate(scorer.encode(rte_rows))
    prompt = _prompt(llama)
    loss, grad = _ours(scorer, prompt, batch)
    ref_loss, ref_grad = _reference_causal(llama, prompt, batch)
    assert grad is not None and grad.abs().sum() > 0
    torch.testing.assert_close(loss, ref_loss, atol=ATOL, rtol=0)
    torch.testing.assert_close(grad, ref_grad, atol=ATOL, rtol=1e-4)


def test_seq2seq_loss_and_gradient_equal_straightforward_forward(t5, rte_rows):
    scorer = LabelScorer(t5, tasks.get_task("rte"), max_input_tokens=64)
    batch = scorer.collate(scorer.encode(rte_rows))
    prompt = _prompt(t5)
    loss, grad = _ours(scorer, prompt, batch)
    ref_loss, ref_grad = _reference_seq2seq(t5, prompt, batch)
    assert grad is not None and grad.abs().sum() > 0
    torch.testing.assert_close(loss, ref_loss, atol=ATOL, rtol=0)
    torch.testing.assert_close(grad, ref_grad, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("model", ["llama", "t5"])
def test_predictions_are_label_ids_in_range(model, request, data_dir):
    backbone = request.getfixturevalue(model)
    task = tasks.get_task("cb")
    rows = load_splits("cb", data_dir, seed=0, max_eval=16).validation
    scorer = LabelScorer(backbone, task, max_input_tokens=48)
    batch = scorer.collate(scorer.encode(rows))
    preds = scorer.predict(_prompt(backbone), batch)
    assert len(preds) == len(rows)
    assert all(p in (0.0, 1.0, 2.0) for p in preds)
    # The prediction is the label word whose first token has the highest logit.
    logits = scorer.answer_logits(_prompt(backbone), batch).detach()[:, scorer.word_ids]
    assert preds == [float(i) for i in logits.argmax(-1).tolist()]


@pytest.mark.parametrize("model", ["llama", "t5"])
def test_padding_does_not_change_an_examples_logits(model, request, rte_rows):
    backbone = request.getfixturevalue(model)
    scorer = LabelScorer(backbone, tasks.get_task("rte"), max_input_tokens=64)
    items = scorer.encode(rte_rows)
    short = min(range(len(items)), key=lambda i: len(items[i][0]))
    long = max(range(len(items)), key=lambda i: len(items[i][0]))
    assert len(items[long][0]) > len(items[short][0]) + 3
    prompt = _prompt(backbone)
    with torch.no_grad():
        alone = scorer.answer_logits(prompt, scorer.collate([items[short]]))[0]
        batch = scorer.collate([items[long], items[short]])
        assert batch.attention_mask[1].sum() < batch.input_ids.shape[1]  # really padded
        padded = scorer.answer_logits(prompt, batch)[1]
        long_alone = scorer.answer_logits(prompt, scorer.collate([items[long]]))[0]
        long_batched = scorer.answer_logits(prompt, batch)[0]
    torch.testing.assert_close(padded, alone, atol=ATOL, rtol=0)
    torch.testing.assert_close(long_batched, long_alone, atol=ATOL, rtol=0)


@pytest.mark.parametrize("model", ["llama", "t5"])
def test_long_inputs_lose_the_end_of_their_longest_field(model, request, data_dir):
    """Inputs used to be cut from the left, so RTE's premise lost its beginning; now the longest text
    field loses its end, and the template, the other field and the answer cue stay whole."""
    backbone = request.getfixturevalue(model)
    tok = backbone.tokenizer
    task = tasks.get_task("rte")
    rows = load_splits("rte", data_dir, seed=0, max_eval=40).validation
    limit = 40
    items, cut = LabelScorer(backbone, task, max_input_tokens=limit).encode_counted(rows)
    full = LabelScorer(backbone, task, max_input_tokens=10_000).encode(rows)
    assert 0 < cut < len(rows)
    assert cut == sum(len(ids) > limit for ids, _ in full)
    for (ids, gold), (full_ids, _), row in zip(items, full, rows, strict=True):
        assert len(ids) <= limit and gold == row["label"]
        if len(full_ids) <= limit:
            assert ids == full_ids  # what fits is not touched
            continue
        if backbone.is_seq2seq:
            assert ids[-1] == tok.eos_token_id
            ids = ids[:-1]
        text = tok.decode(ids)
        premise, hypothesis = row["sentence1"].strip(), row["sentence2"].strip()
        assert text.startswith(premise.split()[0])  # the premise keeps its beginning
        assert text.endswith(" True or false? Answer:") and " Question: " in text  # the template
        assert len(ids) >= limit - 3  # cut no more than it needs (one token per round, joins may differ)
        if len(tok(hypothesis).input_ids) < 8 and len(tok(premise).input_ids) > 30:
            assert f" Question: {hypothesis} True or false?" in text  # the short field stays whole


def test_the_default_length_holds_95_percent_of_the_inputs(llama, data_dir):
    assert covering_length(list(range(1, 101))) == 95
    assert covering_length(list(range(1, 41))) == 40  # short inputs (wic, trec) are all kept whole
    assert covering_length(list(range(1, 81))) == 76  # the floor is 64 or the longest, whichever is less
    assert covering_length([300] * 20 + [10]) == 256  # the papers' 256 is the cap
    task = tasks.get_task("rte")
    splits = load_splits("rte", data_dir, seed=0, k_shot=16, max_eval=200)
    rows = splits.train + splits.validation + splits.test
    scorer = LabelScorer.fitted(llama, task, None, rows)
    lengths = sorted(len(ids) for ids, _ in LabelScorer(llama, task, 10_000).encode(rows))
    assert scorer.max_input_tokens == min(256, lengths[math.ceil(0.95 * len(lengths)) - 1])
    assert scorer.max_input_tokens > 64  # the old default cut three of four RTE inputs
    assert scorer.encode_counted(rows)[1] <= 0.05 * len(rows)
    assert LabelScorer.fitted(llama, task, 48, rows).max_input_tokens == 48  # a setting wins


def test_a_length_below_the_template_is_refused(llama):
    with pytest.raises(UserError, match="cannot hold rte's template and answer cue"):
        LabelScorer(llama, tasks.get_task("rte"), max_input_tokens=8)


def test_stsb_regression_predictions_lie_in_range(llama, t5, data_dir):
    task = tasks.get_task("stsb")
    rows = load_splits("stsb", data_dir, seed=0, max_eval=24).validation
    for backbone in (llama, t5):
        scorer = LabelScorer(backbone, task, max_input_tokens=48)
        batch = scorer.collate(scorer.encode(rows))
        # Training targets the rounded score's word ("zero".."five").
        expected = [scorer.word_ids[min(5, int(float(row["label"]) + 0.5))].item() for row in rows]
        assert batch.target_ids.tolist() == expected
        for prompt in (_prompt(backbone), 50 * _prompt(backbone, seed=2)):
            preds = scorer.predict(prompt, batch)
            assert len(preds) == len(rows)
            assert all(0.0 <= p <= 5.0 for p in preds)
            assert len({round(p, 6) for p in preds}) > 1  # an expected score, not a constant
