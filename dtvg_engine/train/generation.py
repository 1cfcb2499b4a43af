"""Generation tasks: learn to write a target text after the soft prompt and the input, then write it.

Training is teacher-forced cross-entropy over every target token and the end-of-sequence token. Evaluation
is batched greedy decoding from the soft prompt, with a key/value cache, until every row has written the
end-of-sequence token or the cap; a row that has ended leaves the batch, so a batch does not decode
every row for as long as its longest one. Both keep the classification path's speed tricks: batches
padded to their longest row, the LM head run only where a target token is predicted, and, for causal
LMs, the prompt's key/value cache computed once per batch and shared by every row.

Inputs are cut the way classification inputs are (their longest text field loses tokens from its end);
targets keep their beginning. Both are capped at 128 tokens, the papers' generation setting.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from dtvg_engine.config import TrainingSettings
from dtvg_engine.runs.atomic import replacing
from dtvg_engine.runs.runfolder import PREDICTIONS
from dtvg_engine.train import tasks
from dtvg_engine.train.backbones import Backbone
from dtvg_engine.train.data import REFERENCES
from dtvg_engine.train.scoring import LabelScorer

GENERATION_TOKENS_CAP = 128
"""Inputs and targets are each cut to at most this many tokens (end of sequence included), and greedy
decoding stops after this many new tokens, unless a run's `max_input_tokens` / `max_target_tokens` say
otherwise."""
IGNORED = -100
"""Label of a position that is not a target token (cross-entropy skips it)."""


Step = Callable[[torch.Tensor, int, "torch.Tensor | None"], torch.Tensor]
"""One greedy decoding step: (the last tokens of the rows still writing, which new token this is, which
rows of the previous call are still writing or None for all) → their next-token logits [rows, V]."""


class Example(NamedTuple):
    """One encoded generation row (input ids first, as the shared evaluation batching expects)."""

    input_ids: list[int]
    target_ids: list[int]
    """The target's tokens and the end-of-sequence token, at most the cap."""
    text: str
    """The model's input as text (before any cut), for predictions.jsonl."""
    references: list[str]
    """Every reference text of the input (evaluation rows; the target alone for train rows)."""


@dataclass
class GenerationBatch:
    """A padded batch of examples for teacher forcing, and the examples themselves (for decoding)."""

    input_ids: torch.Tensor
    """[B, L] causal: input then target, right-padded; seq2seq: the encoder input, right-padded."""
    attention_mask: torch.Tensor
    labels: torch.Tensor
    """[B, L'] the token each position must predict (IGNORED elsewhere); L' = L for causal LMs, the
    target length for seq2seq."""
    examples: Sequence[Example]


class TextGenerator(LabelScorer):
    """Encodes one generation task's rows for one backbone, trains on targets and generates text."""

    def __init__(
        self,
        backbone: Backbone,
        task: tasks.Task,
        max_input_tokens: int | None = None,
        max_target_tokens: int = GENERATION_TOKENS_CAP,
    ) -> None:
        super().__init__(
            backbone, task, max_input_tokens or GENERATION_TOKENS_CAP, "" if max_input_tokens else "the cap"
        )
        self.max_target_tokens = max_target_tokens
        """Targets longer than this (end of sequence included) lose their end; decoding stops here."""

    # --- encoding -----------------------------------------------------------------------------------

    def _target_ids(self, text: str) -> tuple[list[int], bool]:
        """The target's ids with the end-of-sequence token, within the cap, and whether it was cut.
        A causal LM reads the target after the input's cue, so it starts with a space, as label words do."""
        tok = self.backbone.tokenizer
        text = tasks.clean(text) if self.backbone.is_seq2seq else " " + tasks.clean(text)
        ids = tok(text, add_special_tokens=False).input_ids
        keep = self.max_target_tokens - 1
        return ids[:keep] + [tok.eos_token_id], len(ids) > keep

    def encode_counted(self, rows: Sequence[dict]) -> tuple[list[Example], int]:
        """Encoded rows, and how many had their input or their target cut."""
        examples, cut = [], 0
        for (ids, cut_input), row in zip(self.encode_inputs(rows), rows, strict=True):
            target, cut_target = self._target_ids(row[self.task.target_field])
            references = row.get(REFERENCES) or [tasks.clean(row[self.task.target_field])]
            examples.append(Example(ids, target, tasks.render(self.task, row), references))
            cut += cut_input or cut_target
        return examples, cut

    @property
    def _cuts(self) -> str:
        return f"targets at most {self.max_target_tokens} tokens; rows with their input or target cut"

    def collate(self, items: Sequence[Example]) -> GenerationBatch:
        """Teacher-forcing tensors: causal LMs read input and target as one sequence; seq2seq models
        read the input in the encoder and predict the target in the decoder."""
        pad = self.backbone.tokenizer.pad_token_id
        if self.backbone.is_seq2seq:
            input_ids, mask = _right_padded([ex.input_ids for ex in items], pad)
            labels, _ = _right_padded([ex.target_ids for ex in items], IGNORED)
            return GenerationBatch(input_ids, mask, labels, items)
        input_ids, mask = _right_padded([ex.input_ids + ex.target_ids for ex in items], pad)
        labels = torch.full_like(input_ids, IGNORED)
        for i, ex in enumerate(items):
            start = len(ex.input_ids) - 1  # the input's last token predicts the target's first
            labels[i, start : start + len(ex.target_ids)] = torch.tensor(ex.target_ids)
        return GenerationBatch(input_ids, mask, labels, items)

    # --- training -----------------------------------------------------------------------------------

    def loss(self, prompt: torch.Tensor, batch: GenerationBatch) -> torch.Tensor:
        """Mean cross-entropy over every target token (and end of sequence) of the batch."""
        device = self.backbone.device
        prompt = prompt.to(device=device, dtype=self.backbone.dtype)
        input_ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
        labels = batch.labels.to(device)
        where = labels != IGNORED
        if self.backbone.is_seq2seq:
            logits = self._seq2seq_target_logits(prompt, input_ids, mask, labels)[where]
        else:
            hidden = self._causal_hidden(prompt, input_ids, mask)[where]
            logits = self.backbone.model.get_output_embeddings()(hidden)
        return F.cross_entropy(logits.float(), labels[where])

    def _seq2seq_target_logits(
        self, prompt: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """Logits [B, T, V] at every target position, the target shifted right as the decoder's input."""
        model = self.backbone.model
        start = labels.new_full((labels.shape[0], 1), model.config.decoder_start_token_id)
        decoder_ids = torch.cat([start, labels[:, :-1]], dim=1)
        decoder_ids = decoder_ids.masked_fill(decoder_ids == IGNORED, self._pad)
        return model(
            inputs_embeds=self._seq2seq_inputs(prompt, input_ids),
            attention_mask=self._prompt_mask(prompt, mask),
            decoder_input_ids=decoder_ids,
            decoder_attention_mask=torch.cat(
                [start.new_ones(start.shape), (labels[:, :-1] != IGNORED).long()], 1
            ),
        ).logits

    def _seq2seq_inputs(self, prompt: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.cat([prompt[None].expand(input_ids.shape[0], -1, -1), self.backbone.embed(input_ids)], 1)

    @staticmethod
    def _prompt_mask(prompt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.cat([mask.new_ones(mask.shape[0], prompt.shape[0]), mask], dim=1)

    # --- generation ---------------------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, prompt: torch.Tensor, batch: GenerationBatch) -> list[str]:
        """Each row's greedy output, without the end-of-sequence token."""
        device = self.backbone.device
        prompt = prompt.to(device=device, dtype=self.backbone.dtype)
        if self.backbone.is_seq2seq:
            input_ids, mask = _right_padded([ex.input_ids for ex in batch.examples], self._pad)
            tokens = self._seq2seq_greedy(prompt, input_ids.to(device), mask.to(device))
        else:
            input_ids, mask = _left_padded([ex.input_ids for ex in batch.examples], self._pad)
            tokens = self._causal_greedy(prompt, input_ids.to(device), mask.to(device))
        return [self._text(row) for row in tokens.tolist()]

    @property
    def _pad(self) -> int:
        return self.backbone.tokenizer.pad_token_id

    def _text(self, ids: list[int]) -> str:
        eos = self.backbone.tokenizer.eos_token_id
        ids = ids[: ids.index(eos)] if eos in ids else ids
        return self.backbone.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def _greedy(self, first: torch.Tensor, step: Step) -> torch.Tensor:
        """Tokens [B, ≤cap]: `first` [B, V] logits of the first new token; `step(tokens, n, keep)` the
        logits after feeding the n-th new token of each row still writing. A row that has written end of
        sequence leaves the batch (its tail is end of sequence), so the rest decode without computing for
        it: `keep`, when not None, says which rows of `step`'s previous call are still writing."""
        eos = self.backbone.tokenizer.eos_token_id
        token = first.argmax(-1)
        out = token.new_full((token.shape[0], self.max_target_tokens), eos)
        out[:, 0] = token
        rows = torch.arange(token.shape[0], device=token.device)  # the batch row of each row still writing
        length = 1
        for n in range(1, self.max_target_tokens):
            writing = token != eos
            if not bool(writing.any()):
                break
            keep = None if bool(writing.all()) else writing.nonzero().squeeze(1)
            if keep is not None:
                rows, token = rows[keep], token[keep]
            token = step(token, n, keep).argmax(-1)
            out[rows, n] = token
            length = n + 1
        return out[:, :length]

    def _causal_greedy(
        self, prompt: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Greedy decoding after left-padded inputs; the prompt's cache is computed once and shared."""
        decoder = self.backbone.model.get_decoder()
        head = self.backbone.model.get_output_embeddings()
        r = prompt.shape[0]
        cache = decoder(inputs_embeds=prompt[None], use_cache=True).cache
        cache.batch_repeat_interleave(input_ids.shape[0])
        positions = r + (mask.cumsum(1) - 1).clamp(min=0)  # left padding: each row counts its own tokens
        full_mask = self._prompt_mask(prompt, mask)
        hidden = decoder(
            inputs_embeds=self.backbone.embed(input_ids),
            attention_mask=full_mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
        ).last_hidden_state
        last = positions[:, -1]

        def step(token: torch.Tensor, n: int, keep: torch.Tensor | None) -> torch.Tensor:
            nonlocal full_mask, last
            if keep is not None:  # rows that have ended leave the cache, mask and positions
                cache.batch_select_indices(keep)
                full_mask, last = full_mask[keep], last[keep]
            full_mask = torch.cat([full_mask, full_mask.new_ones(full_mask.shape[0], 1)], dim=1)
            out = decoder(
                inputs_embeds=self.backbone.embed(token[:, None]),
                attention_mask=full_mask,
                position_ids=(last + n)[:, None],
                cache=cache,
                use_cache=True,
            ).last_hidden_state
            return head(out[:, -1]).float()

        return self._greedy(head(hidden[:, -1]).float(), step)

    def _seq2seq_greedy(
        self, prompt: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Greedy decoding: the encoder runs once, the decoder one token at a time with its cache."""
        model = self.backbone.model
        full_mask = self._prompt_mask(prompt, mask)
        encoded = model.get_encoder()(
            inputs_embeds=self._seq2seq_inputs(prompt, input_ids), attention_mask=full_mask
        )
        start = input_ids.new_full((input_ids.shape[0],), model.config.decoder_start_token_id)
        cache = None

        def step(token: torch.Tensor, n: int = 0, keep: torch.Tensor | None = None) -> torch.Tensor:
            nonlocal cache, full_mask
            if keep is not None:  # rows that have ended leave the encoder states, mask and cache
                encoded.last_hidden_state = encoded.last_hidden_state[keep]
                full_mask = full_mask[keep]
                cache.batch_select_indices(keep)
            out = model(
                encoder_outputs=encoded,
                attention_mask=full_mask,
                decoder_input_ids=token[:, None],
                cache=cache,
                use_cache=True,
            )
            cache = out.cache
            return out.logits[:, -1].float()

        return self._greedy(step(start), step)

    def golds(self, items: Sequence[Example]) -> list[list[str]]:
        """What the metrics score predictions against: every reference of each row."""
        return [ex.references for ex in items]


def fitted_scorer(
    backbone: Backbone, task: tasks.Task, settings: TrainingSettings, rows: Sequence[dict]
) -> LabelScorer:
    """The scorer a task trains and is evaluated with under a run's `settings`: a TextGenerator for a
    generation task (inputs and targets within their settings, else the 128-token cap), else a
    LabelScorer (`fitted` to the rows' input lengths)."""
    if task.generation:
        targets = settings.max_target_tokens or GENERATION_TOKENS_CAP
        return TextGenerator(backbone, task, settings.max_input_tokens, targets)
    return LabelScorer.fitted(backbone, task, settings.max_input_tokens, rows)


def _right_padded(rows: Sequence[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] ids padded at the end with `pad`, and the mask of real tokens."""
    width = max(len(ids) for ids in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def _left_padded(rows: Sequence[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] ids padded at the start (so every row's next token goes in the same column), and the mask."""
    ids, mask = _right_padded([row[::-1] for row in rows], pad)
    return ids.flip(1), mask.flip(1)


def write_predictions(
    run_dir: Path, split: str, step: int | None, items: Sequence[Example], preds: Sequence[str]
) -> None:
    """Replace the run's predictions.jsonl with one line per row: its input, the generated text and its
    references (and which split and step they come from)."""
    with replacing(run_dir / PREDICTIONS) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for ex, pred in zip(items, preds, strict=True):
            record = {
                "split": split,
                "step": step,
                "input": ex.text,
                "prediction": pred,
                "references": ex.references,
            }
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
