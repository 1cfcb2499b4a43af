"""The forward pass of prompt tuning: encode examples, score label words, compute the loss.

Classification is text-to-text (DESIGN §8): the model reads `[soft prompt] + input text` and the
answer is the label word whose first token gets the highest logit at the answer position. Training
uses the full-vocabulary cross-entropy of the gold word's first token at that position.

Three things make a step fast on CPU (DESIGN §9) without changing the numbers:
- batches are padded to their longest example, not to a fixed length;
- the LM head runs only at the answer position, not over every token;
- for causal LMs the prompt's hidden states (its key/value cache) are computed once per batch and
  shared by every example, since the prompt precedes every input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dtvg_engine import tasks
from dtvg_engine.backbones import Backbone


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


class LabelScorer:
    """Encodes one task's examples for one backbone and scores its label words."""

    def __init__(self, backbone: Backbone, task: tasks.Task, max_input_tokens: int) -> None:
        self.backbone = backbone
        self.task = task
        self.max_input_tokens = max_input_tokens
        tok = backbone.tokenizer
        self.word_ids = torch.tensor(
            [tok(w, add_special_tokens=False).input_ids[0] for w in task.label_words]
        )
        """First-token id of every label word, in label-id order."""

    # --- encoding -----------------------------------------------------------------------------------

    def encode(self, rows: Sequence[dict]) -> list[tuple[list[int], float]]:
        """Token ids (truncated from the left, so the answer cue survives) and gold label per row."""
        tok = self.backbone.tokenizer
        texts = [tasks.render(self.task, row) for row in rows]
        encoded = tok(texts, add_special_tokens=False).input_ids
        keep = self.max_input_tokens - (1 if self.backbone.is_seq2seq else 0)
        items = []
        for ids, row in zip(encoded, rows, strict=True):
            ids = ids[-keep:]
            if self.backbone.is_seq2seq:
                ids = ids + [tok.eos_token_id]
            items.append((ids, tasks.label_of(self.task, row)))
        return items

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

    def _classes(self, golds: Sequence[float]) -> torch.Tensor:
        """Label-word index per gold label (regression scores round to their nearest word)."""
        return torch.tensor([tasks.target_id(self.task, g) for g in golds], dtype=torch.long)

    # --- scoring ------------------------------------------------------------------------------------

    def answer_logits(self, prompt: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Full-vocabulary logits [B, V] at each example's answer position, for soft prompt [r, d]."""
        device = self.backbone.device
        input_ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
        prompt = prompt.to(device=device, dtype=self.backbone.model.dtype)
        # bf16 autocast on a GPU (DESIGN §8); the CPU path stays in float32.
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            if self.backbone.is_seq2seq:
                return self._seq2seq_logits(prompt, input_ids, mask)
            return self._causal_logits(prompt, input_ids, mask, batch.answer_index.to(device))

    def _causal_logits(
        self, prompt: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor, answer_index: torch.Tensor
    ) -> torch.Tensor:
        model = self.backbone.model
        decoder = model.get_decoder()
        size, length = input_ids.shape
        r = prompt.shape[0]
        # The prompt is the same for every example: run it once, then share its key/value cache.
        cache = decoder(inputs_embeds=prompt[None], use_cache=True).cache
        cache.batch_repeat_interleave(size)
        positions = torch.arange(r, r + length, device=input_ids.device).expand(size, length)
        hidden = decoder(
            inputs_embeds=self.backbone.embed(input_ids),
            attention_mask=torch.cat([mask.new_ones(size, r), mask], dim=1),
            position_ids=positions,
            cache=cache,
            use_cache=True,
        ).last_hidden_state
        answer = hidden[torch.arange(size, device=hidden.device), answer_index]
        return model.get_output_embeddings()(answer)

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
        """Mean full-vocabulary cross-entropy of the gold label word's first token."""
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
