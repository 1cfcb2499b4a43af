"""The label-word scorer (DESIGN §8, §9): our fast forward equals the straightforward one.

The reference computations below are deliberately naive: the soft prompt is concatenated in front of
every example's embeddings, the whole model runs, and the full-vocabulary logits are read at the answer
position. The scorer's shortcuts (prompt key/value cache shared by the batch, LM head only at the answer,
padding to the longest example) must not change the loss, the prompt gradient or the predictions.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dtvg_engine import tasks
from dtvg_engine.data import load_splits
from dtvg_engine.scoring import LabelScorer

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
def test_truncation_keeps_the_answer_cue(model, request, rte_rows):
    backbone = request.getfixturevalue(model)
    tok = backbone.tokenizer
    task = tasks.get_task("rte")
    limit = 8
    scorer = LabelScorer(backbone, task, max_input_tokens=limit)
    full = LabelScorer(backbone, task, max_input_tokens=10_000)
    cue = tok(" True or false? Answer:", add_special_tokens=False).input_ids
    encoded = zip(scorer.encode(rte_rows), full.encode(rte_rows), rte_rows, strict=True)
    for (ids, gold), (full_ids, _), row in encoded:
        assert len(ids) == limit
        assert gold == row["label"]
        text_ids = ids[:-1] if backbone.is_seq2seq else ids
        if backbone.is_seq2seq:
            assert ids[-1] == tok.eos_token_id
            assert full_ids[-1] == tok.eos_token_id
            full_ids = full_ids[:-1]
        assert text_ids == full_ids[-len(text_ids) :]  # the end of the input survives
        assert text_ids[-len(cue) :] == cue
        assert tok.decode(text_ids).endswith("Answer:")


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
