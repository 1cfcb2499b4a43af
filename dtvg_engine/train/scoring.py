"""The forward pass of prompt tuning: encode examples, score label words, compute the loss.

Classification is text-to-text (docs/architecture.md, 'Backbones and data'): the model reads `[soft prompt] +
input text` and the answer is the label word whose first token gets the highest logit at the answer position.
Training uses the full-vocabulary cross-entropy of the gold word's first token at that position.

Three things make a step fast on CPU (docs/architecture.md, 'Performance') without changing the numbers:
- batches are padded to their longest example, not to a fixed length;
- the LM head runs only at the answer position, not over every token;
- for causal LMs the prompt's hidden states (its key/value cache) are computed once per batch and
  shared by every example, since the prompt precedes every input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from dtvg_engine.errors import UserError
from dtvg_engine.train import tasks
from dtvg_engine.train.backbones import Backbone

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from dtvg_engine.train.data import Splits

INPUT_TOKENS_CAP = 256
"""The longest default input, in tokens: the papers' `max_source_length`."""
INPUT_COVERAGE = 0.95
"""The share of a task's inputs the default length holds whole."""
INPUT_TOKENS_FLOOR = 64
"""The default length is never below this (or the longest input, when that is shorter): a task of short
inputs (wic, cola, trec) keeps every input whole instead of losing its longest 5 %."""
LENGTH_SAMPLE = 4000
"""At most this many of a run's rows are measured for the default length (evenly spread)."""

Item = tuple[list[int], float]
"""One encoded example: its token ids and its gold label."""


def covering_length(
    lengths: Sequence[int],
    coverage: float = INPUT_COVERAGE,
    cap: int = INPUT_TOKENS_CAP,
    floor: int = INPUT_TOKENS_FLOOR,
) -> int:
    """The smallest length that holds `coverage` of `lengths` whole, at most `cap`, and at least `floor`
    or the longest input, whichever is shorter."""
    ordered = sorted(lengths)
    covering = ordered[max(0, math.ceil(coverage * len(ordered)) - 1)]
    return min(max(covering, min(floor, ordered[-1])), cap)


@dataclass
class Batch:
    """A padded batch of encoded examples of one task."""

    input_ids: torch.Tensor
    """[B, L] token ids, right-padded."""
    attention_mask: torch.Tensor
    """[B, L] 1 for real tokens."""
    answer_index: torch.Tensor
    """[B] position of each example's last real token, where the answer is read (causal LMs)."""
    target_ids: torch.Tensor
    """[B] vocabulary id of the gold label word's first token."""
    golds: list[float]
    """Gold labels as given by the task (class ids, or scores for regression)."""


def check_label_words(task: tasks.Task, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The first token of each label word, in label-id order; refuses words that start with the same
    token, since the answer is the highest-ranked first token and such words could never be told apart."""
    seen: dict[int, str] = {}
    for word in task.label_words:
        token = tokenizer(word, add_special_tokens=False).input_ids[0]
        if token in seen:
            raise UserError(
                f"{task.origin}: task {task.name!r}: label_words {seen[token]!r} and {word!r} start with the "
                "same token under this model's tokenizer; pick words that start differently"
            )
        seen[token] = word
    return list(seen)


class LabelScorer:
    """Encodes one task's examples for one backbone and scores its label words."""

    def __init__(self, backbone: Backbone, task: tasks.Task, max_input_tokens: int, rule: str = "") -> None:
        self.backbone = backbone
        self.task = task
        self.max_input_tokens = max_input_tokens
        """Inputs longer than this (end-of-sequence token included) are cut in their longest text field."""
        self.rule = rule or "--max-input-tokens"
        """Where `max_input_tokens` came from, for the run's log."""
        self.word_ids = torch.tensor(check_label_words(task, backbone.tokenizer))
        """First-token id of every label word, in label-id order."""
        frame = len(self._ids(dict.fromkeys(task.text_fields, ""))) + self._eos
        if max_input_tokens < frame:
            raise UserError(
                f"--max-input-tokens {max_input_tokens} cannot hold {task.name}'s template and answer "
                f"cue ({frame} tokens with every text field empty); use at least {frame + 16}"
            )

    @classmethod
    def fitted(
        cls, backbone: Backbone, task: tasks.Task, max_input_tokens: int | None, rows: Sequence[dict]
    ) -> LabelScorer:
        """A scorer whose input length is `max_input_tokens`, or, when that is None, the length that
        holds 95% of these rows' inputs whole (never fewer than 64 tokens or the longest input), at most 256
        tokens (the papers' input length)."""
        if max_input_tokens is not None:
            return cls(backbone, task, max_input_tokens)
        step = max(1, math.ceil(len(rows) / LENGTH_SAMPLE))
        sample = [tasks.render(task, row) for row in rows[::step]]
        eos = 1 if backbone.is_seq2seq else 0
        lengths = [len(ids) + eos for ids in backbone.tokenizer(sample, add_special_tokens=False).input_ids]
        length = covering_length(lengths)
        rule = (
            f"holds {INPUT_COVERAGE:.0%} of the {len(sample)} inputs measured whole; "
            f"at least {INPUT_TOKENS_FLOOR} (or the longest), at most {INPUT_TOKENS_CAP}"
        )
        return cls(backbone, task, length, rule)

    # --- encoding -----------------------------------------------------------------------------------

    @property
    def _eos(self) -> int:
        return 1 if self.backbone.is_seq2seq else 0

    @property
    def _budget(self) -> int:
        """Tokens the rendered text may take (the seq2seq end-of-sequence token comes on top)."""
        return self.max_input_tokens - self._eos

    def _ids(self, row: Mapping) -> list[int]:
        return self.backbone.tokenizer(tasks.render(self.task, row), add_special_tokens=False).input_ids

    def encode(self, rows: Sequence[dict]) -> list[Item]:
        """Token ids and gold label per row; inputs too long are cut in their longest text field."""
        return self.encode_counted(rows)[0]

    def encode_counted(self, rows: Sequence[dict]) -> tuple[list[Item], int]:
        """`encode`, and how many of the rows had to be cut."""
        inputs = self.encode_inputs(rows)
        items = [(ids, tasks.label_of(self.task, row)) for (ids, _), row in zip(inputs, rows, strict=True)]
        return items, sum(cut for _, cut in inputs)

    def encode_inputs(self, rows: Sequence[dict]) -> list[tuple[list[int], bool]]:
        """Each row's input ids (cut in its longest text field if too long), and whether it was cut."""
        tok = self.backbone.tokenizer
        texts = [tasks.render(self.task, row) for row in rows]
        encoded = tok(texts, add_special_tokens=False).input_ids
        inputs = []
        for ids, row in zip(encoded, rows, strict=True):
            cut = len(ids) > self._budget
            if cut:
                ids = self.cut_fields(row)
            if self.backbone.is_seq2seq:
                ids = ids + [tok.eos_token_id]
            inputs.append((ids, cut))
        return inputs

    def cut_fields(self, row: Mapping) -> list[int]:
        """The row's input within budget: its longest text field loses one token at a time (from its
        end, so every field keeps its beginning) until the input fits; the template and the answer cue
        are never cut (docs/architecture.md, 'Methods'). Field lengths are counted on each field alone, so the
        whole input is tokenized again after each round and cut further if the joins tokenized longer."""
        tok = self.backbone.tokenizer
        texts = {name: tasks.field_text(self.task, row, name) for name in self.task.text_fields}
        spans = {
            name: tok(text, add_special_tokens=False, return_offsets_mapping=True).offset_mapping
            for name, text in texts.items()
        }
        keep = {name: len(span) for name, span in spans.items()}
        while True:
            shortened = {name: texts[name][: spans[name][n - 1][1]] if n else "" for name, n in keep.items()}
            ids = self._ids({**row, **shortened})
            if len(ids) <= self._budget:
                return ids
            for _ in range(len(ids) - self._budget):
                longest = max(keep, key=lambda name: keep[name])  # ties: the first field of the template
                keep[longest] = max(0, keep[longest] - 1)  # all empty fits: the constructor checked it

    def encode_splits(self, splits: Splits) -> tuple[list[Item], list[Item], list[Item], str]:
        """The encoded train, validation and test rows, and the run's log line on their length."""
        parts = {
            name: self.encode_counted(rows)
            for name, rows in (
                ("train", splits.train),
                ("validation", splits.validation),
                ("test", splits.test),
            )
        }
        counts = ", ".join(f"{name} {cut} of {len(items)}" for name, (items, cut) in parts.items())
        note = (
            f"{self.task.name} inputs: at most {self.max_input_tokens} tokens ({self.rule}); "
            f"{self._cuts}: {counts}"
        )
        return parts["train"][0], parts["validation"][0], parts["test"][0], note

    @property
    def _cuts(self) -> str:
        """What the counts of the length log line count."""
        return "cut in their longest text field"

    def collate(self, items: Sequence[tuple[list[int], float]]) -> Batch:
        pad = self.backbone.tokenizer.pad_token_id
        width = max(len(ids) for ids, _ in items)
        input_ids = torch.full((len(items), width), pad, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, (ids, _) in enumerate(items):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
        golds = [gold for _, gold in items]
        return Batch(input_ids, mask, mask.sum(1) - 1, self.word_ids[self._classes(golds)], golds)

    def golds(self, items: Sequence[Item]) -> list[float]:
        """What the metrics score predictions against: each row's gold label."""
        return [gold for _, gold in items]

    def _classes(self, golds: Sequence[float]) -> torch.Tensor:
        """Label-word index per gold label (regression scores round to their nearest word)."""
        return torch.tensor([tasks.target_id(self.task, g) for g in golds], dtype=torch.long)

    # --- scoring ------------------------------------------------------------------------------------

    def answer_logits(self, prompt: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Full-vocabulary logits [B, V] at each example's answer position, for soft prompt [r, d]."""
        device = self.backbone.device
        input_ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
        # The fp32 prompt enters in the model's precision (`--precision`); gradients flow back to fp32.
        prompt = prompt.to(device=device, dtype=self.backbone.dtype)
        if self.backbone.is_seq2seq:
            return self._seq2seq_logits(prompt, input_ids, mask)
        return self._causal_logits(prompt, input_ids, mask, batch.answer_index.to(device))

    def _causal_logits(
        self, prompt: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor, answer_index: torch.Tensor
    ) -> torch.Tensor:
        hidden = self._causal_hidden(prompt, input_ids, mask)
        answer = hidden[torch.arange(input_ids.shape[0], device=hidden.device), answer_index]
        return self.backbone.model.get_output_embeddings()(answer)

    def _causal_hidden(
        self, prompt: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """The decoder's last hidden states [B, L, d] over right-padded inputs read after the prompt."""
        decoder = self.backbone.model.get_decoder()
        size, length = input_ids.shape
        r = prompt.shape[0]
        # The prompt is the same for every example: run it once, then share its key/value cache.
        cache = decoder(inputs_embeds=prompt[None], use_cache=True).cache
        cache.batch_repeat_interleave(size)
        positions = torch.arange(r, r + length, device=input_ids.device).expand(size, length)
        return decoder(
            inputs_embeds=self.backbone.embed(input_ids),
            attention_mask=torch.cat([mask.new_ones(size, r), mask], dim=1),
            position_ids=positions,
            cache=cache,
            use_cache=True,
        ).last_hidden_state

    def _seq2seq_logits(
        self, prompt: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        model = self.backbone.model
        size = input_ids.shape[0]
        embeds = torch.cat([prompt[None].expand(size, -1, -1), self.backbone.embed(input_ids)], dim=1)
        start = torch.full((size, 1), model.config.decoder_start_token_id, device=input_ids.device)
        out = model(
            inputs_embeds=embeds,
            attention_mask=torch.cat([mask.new_ones(size, prompt.shape[0]), mask], dim=1),
            decoder_input_ids=start,
        )
        return out.logits[:, 0]

    def loss(self, prompt: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Mean full-vocabulary cross-entropy of the gold label word's first token.

        The batch runs whole, as drawn. Two length-sorted halves, each padded to its own longest, took
        23% less CPU time per step with whole inputs but change float rounding (1e-6), and short runs
        amplified that into other trajectories and test scores (docs/performance.md); whole batches
        keep a run's results the same whatever the thread count or evaluation settings.
        """
        logits = self.answer_logits(prompt, batch).float()
        return F.cross_entropy(logits, batch.target_ids.to(logits.device))

    @torch.no_grad()
    def predict(self, prompt: torch.Tensor, batch: Batch) -> list[float]:
        """Predicted label id per example (expected score for regression tasks)."""
        word_logits = self.answer_logits(prompt, batch).float()[:, self.word_ids.to(self.backbone.device)]
        if self.task.regression:
            values = torch.arange(len(self.word_ids), dtype=torch.float, device=word_logits.device)
            return (word_logits.softmax(-1) @ values).tolist()
        return [float(i) for i in word_logits.argmax(-1).tolist()]
