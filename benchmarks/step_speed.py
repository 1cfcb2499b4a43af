"""Training speed of our stage-1 step against standard peft prompt tuning, measured in the same run.

Ours is exactly what `dtvg_engine.train.training.fit` does per step: `LabelScorer.loss` (prompt key/value
cache computed once per batch, LM head only at the answer position), backward, gradient clipping, AdamW
on the prompt. The reference is peft `PromptTuningConfig` + `get_peft_model` on a second copy of the
same backbone, trained the standard way: the input is the example tokens followed by the gold label
word's first token, `labels` mark only that token, and the model computes its full-vocabulary loss over
every position (HF shifts the labels itself).

With a generation task (`--task web_nlg`) ours is `TextGenerator.loss` (teacher forcing, the LM head only
where a target token is predicted) and the reference reads the same input-and-target sequences with
`labels` marking the target tokens and end of sequence, peft's standard causal-LM fine-tuning form.

Both see the same real task batches in the same order, with the same learning rate. Warmup steps are
not timed; the timed steps run in interleaved blocks (ours/reference, then reference/ours, ...) so
machine noise hits both alike, and the median over blocks is reported. The last line printed is a JSON
object with the figures.

    python benchmarks/step_speed.py                       # smollm2-135m, batch 8, prompt 100, RTE
    python benchmarks/step_speed.py --task web_nlg        # a generation task: teacher-forced targets
    python benchmarks/step_speed.py --model tiny-llama    # fast smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

from dtvg_engine.config import TRAINING_DEFAULTS
from dtvg_engine.train.backbones import Backbone, load_backbone
from dtvg_engine.train.data import load_splits
from dtvg_engine.train.generation import GenerationBatch
from dtvg_engine.train.prompts import sample_init
from dtvg_engine.train.scoring import Batch
from dtvg_engine.train.tasks import get_task
from dtvg_engine.train.training import SoftPrompt, batch_indices

from common import default_data_dir, inputs_note, parse_timing_args, setup, sync, task_scorer, timing_parser

IGNORE = -100


@dataclass
class RefBatch:
    """One batch in the standard peft training form: example tokens + gold label token, right-padded."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


def reference_batch(items: Sequence, batch: Batch | GenerationBatch, pad_id: int) -> RefBatch:
    """The same examples as `batch` in peft's form: a generation batch's sequences with each target
    token labelled at its own position (HF shifts); a classification example followed by its gold label
    token, which alone is labelled."""
    if isinstance(batch, GenerationBatch):
        labels = torch.full_like(batch.labels, IGNORE)
        labels[:, 1:] = batch.labels[:, :-1]  # ours labels the position that predicts a token
        return RefBatch(batch.input_ids, batch.attention_mask, labels)
    rows = [ids + [int(target)] for (ids, _), target in zip(items, batch.target_ids.tolist(), strict=True)]
    width = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, ids in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
        labels[i, len(ids) - 1] = ids[-1]
    return RefBatch(input_ids, mask, labels)


def make_reference(backbone: Backbone, init: torch.Tensor) -> torch.nn.Module:
    """peft prompt tuning on `backbone`'s model, its virtual-token embedding set to `init`."""
    config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=init.shape[0],
        prompt_tuning_init=PromptTuningInit.RANDOM,
        token_dim=backbone.hidden_size,
    )
    model = get_peft_model(backbone.model, config)
    model.eval()  # same mode as our frozen backbone (no dropout either way)
    set_reference_prompt(model, init)
    return model


def set_reference_prompt(model: torch.nn.Module, prompt: torch.Tensor) -> None:
    weight = model.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        weight.copy_(prompt.to(weight.device, weight.dtype))


def reference_loss(model: torch.nn.Module, batch: RefBatch, device: torch.device) -> torch.Tensor:
    return model(
        input_ids=batch.input_ids.to(device),
        attention_mask=batch.attention_mask.to(device),
        labels=batch.labels.to(device),
    ).loss


def train_step(
    loss_fn: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer, params: list, max_norm: float
) -> None:
    """One step as `training.fit` takes it (less the event and scheduler bookkeeping)."""
    loss = loss_fn()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    optimizer.step()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return parse_timing_args(timing_parser(__doc__.split("\n\n")[0], steps=6, block=1), argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    say = setup(args)
    warnings.filterwarnings("ignore", category=FutureWarning)  # peft asks a deprecated transformers API
    lr, weight_decay = TRAINING_DEFAULTS["lr"], TRAINING_DEFAULTS["weight_decay"]
    max_norm = TRAINING_DEFAULTS["max_grad_norm"]

    ours_bb = load_backbone(args.model, args.device)
    if ours_bb.is_seq2seq:
        print("step_speed compares causal LMs only (peft CAUSAL_LM prompt tuning)", file=sys.stderr)
        return 2
    ref_bb = load_backbone(args.model, args.device)  # a second copy: peft's wrapping must not touch ours
    device = ours_bb.device
    task = get_task(args.task)
    scorer = task_scorer(ours_bb, task)

    data_dir = args.data_dir or default_data_dir()
    train_items = scorer.encode(load_splits(task.name, data_dir, seed=args.seed).train)
    blocks = -(-args.steps // args.block)
    total = args.warmup + blocks * args.block
    pad_id = ours_bb.tokenizer.pad_token_id
    ours_batches, ref_batches = [], []
    for step in range(1, total + 1):
        items = [train_items[i] for i in batch_indices(len(train_items), args.batch_size, step, args.seed)]
        batch = scorer.collate(items)
        ours_batches.append(batch)
        ref_batches.append(reference_batch(items, batch, pad_id))
    widths = [b.input_ids.shape[1] for b in ours_batches]
    say(
        f"{args.model} on {device}, {args.threads} threads | task {task.name} from {data_dir} | "
        f"batch {args.batch_size}, prompt {args.prompt_length}, {inputs_note(scorer)} "
        f"(batch widths {min(widths)}-{max(widths)})"
    )

    init = sample_init(ours_bb, args.prompt_length, args.seed)
    tuner = SoftPrompt(init).to(device)
    ours_params = [tuner.weight]
    ours_opt = torch.optim.AdamW(ours_params, lr=lr, weight_decay=weight_decay)
    reference = make_reference(ref_bb, init)
    ref_params = [p for p in reference.parameters() if p.requires_grad]
    ref_opt = torch.optim.AdamW(ref_params, lr=lr, weight_decay=weight_decay)
    trainable = sum(p.numel() for p in ref_params)
    if trainable != init.numel():
        print(f"reference trains {trainable} values, expected {init.numel()}", file=sys.stderr)
        return 1

    # Same prompt weights, first batch: the two losses must agree.
    with torch.no_grad():
        ours_loss = scorer.loss(tuner.weight, ours_batches[0]).item()
        ref_loss = reference_loss(reference, ref_batches[0], device).item()
    diff = abs(ours_loss - ref_loss)
    say(f"first-batch loss: ours {ours_loss:.6f}, reference {ref_loss:.6f}, |diff| {diff:.2e}")

    def ours_step(i: int) -> None:
        train_step(lambda: scorer.loss(tuner.weight, ours_batches[i]), ours_opt, ours_params, max_norm)

    def ref_step(i: int) -> None:
        train_step(lambda: reference_loss(reference, ref_batches[i], device), ref_opt, ref_params, max_norm)

    for i in range(args.warmup):
        ours_step(i)
        ref_step(i)
    sync(device)

    def timed(step: Callable[[int], None], first: int) -> tuple[float, float]:
        """Samples/s of one block by the wall clock and by this process's CPU time."""
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(first, first + args.block):
            step(i)
        sync(device)
        samples = args.block * args.batch_size
        return samples / (time.perf_counter() - wall), samples / (time.process_time() - cpu)

    ours_rates: list[tuple[float, float]] = []
    ref_rates: list[tuple[float, float]] = []
    for k in range(blocks):
        first = args.warmup + k * args.block
        order = [(ours_step, ours_rates), (ref_step, ref_rates)]
        for step, rates in order if k % 2 == 0 else order[::-1]:  # ABBA: cancel slow drifts
            rates.append(timed(step, first))
        say(
            f"block {k + 1}/{blocks}: ours {ours_rates[-1][0]:7.2f}  reference {ref_rates[-1][0]:7.2f} "
            f"samples/s  ({ours_rates[-1][0] / ref_rates[-1][0]:.2f}x)"
        )

    ours_rate = statistics.median(wall for wall, _ in ours_rates)
    ref_rate = statistics.median(wall for wall, _ in ref_rates)
    ratio = ours_rate / ref_rate
    paired = statistics.median(o[0] / r[0] for o, r in zip(ours_rates, ref_rates, strict=True))
    cpu_ratio = statistics.median(o for _, o in ours_rates) / statistics.median(r for _, r in ref_rates)
    say(f"ours      {ours_rate:8.2f} samples/s  (median of {blocks} blocks of {args.block} steps)")
    say(f"reference {ref_rate:8.2f} samples/s  (peft prompt tuning, full-vocabulary loss)")
    say(f"ratio     {ratio:8.2f}x")
    say(
        f"  cross-checks for a busy machine: median per-block ratio {paired:.2f}x, "
        f"CPU-time ratio {cpu_ratio:.2f}x"
    )
    result = {
        "model": args.model,
        "task": task.name,
        "batch_size": args.batch_size,
        "prompt_length": args.prompt_length,
        "threads": args.threads,
        "ours_samples_per_s": round(ours_rate, 3),
        "reference_samples_per_s": round(ref_rate, 3),
        "ratio": round(ratio, 3),
        "loss_max_abs_diff": diff,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
