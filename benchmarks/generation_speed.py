"""Decoding speed of a generation run's evaluation against peft prompt tuning and transformers' `generate`.

Ours is exactly what a run does at each evaluation of a generation task: `training.predictions` with a
`TextGenerator` (length-sorted batches, left padding, the prompt's key/value cache computed once per
batch and shared by its rows, greedy decoding with a cache until every row has ended or the cap). The
reference is peft `PromptTuningConfig` + `get_peft_model` on a second copy of the same backbone, its
virtual tokens set to the same prompt, and transformers' `generate` (greedy, the same cap, stopping at
end of sequence), one batch at a time on the same batches of the same rows, left-padded as `generate`
expects. `same_outputs` is the share of rows whose greedy text is the reference's for that row decoded
alone: peft's prompt tuning drops `generate`'s position ids, so in a left-padded batch a row's padding
shifts its positions and its text may change (`same_outputs_padded_reference` says how often).

The prompt is a run's tuned one (`--prompt RUN/prompt.safetensors`), else the shared initialization's
(the vocabulary sample every run starts from). Each side decodes every batch once untimed, then the
timed passes alternate (ours/reference, then reference/ours, ...) so machine noise hits both alike; the
median pass is reported. The last line printed is a JSON object with the figures.

    python benchmarks/generation_speed.py                       # smollm2-135m, common_gen, 64 rows
    python benchmarks/generation_speed.py --model tiny-llama    # fast smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
from safetensors.torch import load_file

from dtvg_engine.train.backbones import DEFAULT_MODEL, Backbone, load_backbone
from dtvg_engine.train.data import load_splits
from dtvg_engine.train.generation import GENERATION_TOKENS_CAP, Example, TextGenerator
from dtvg_engine.train.prompts import sample_init
from dtvg_engine.train.tasks import get_task
from dtvg_engine.train.training import predictions

from common import default_data_dir, setup, sync


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--task", default="common_gen", help="a generation task (default common_gen)")
    parser.add_argument("--rows", type=int, default=64, help="validation rows decoded (default 64)")
    parser.add_argument("--batch-size", type=int, default=16, help="rows per batch (default 16, a run's)")
    parser.add_argument("--prompt-length", type=int, default=100)
    parser.add_argument("--prompt", type=Path, default=None, help="a run's prompt.safetensors")
    parser.add_argument(
        "--max-new-tokens", type=int, default=GENERATION_TOKENS_CAP, help="the decoding cap (default 128)"
    )
    parser.add_argument("--passes", type=int, default=2, help="timed passes of each (default 2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    for name in ("rows", "batch_size", "prompt_length", "max_new_tokens", "passes", "threads"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if not get_task(args.task).generation:
        parser.error(f"--task {args.task} is not a generation task")
    return args


def make_reference(backbone: Backbone, prompt: torch.Tensor) -> torch.nn.Module:
    """peft prompt tuning on `backbone`'s model, its virtual-token embedding set to `prompt`."""
    config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=prompt.shape[0],
        prompt_tuning_init=PromptTuningInit.RANDOM,
        token_dim=backbone.hidden_size,
    )
    model = get_peft_model(backbone.model, config)
    model.eval()
    weight = model.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        weight.copy_(prompt.to(weight.device, weight.dtype))
    return model


def reference_texts(
    model: torch.nn.Module, backbone: Backbone, batches: list[list[Example]], max_new_tokens: int
) -> list[str]:
    """Each row's greedy text from peft's model and `generate`, batch by batch, left-padded."""
    tok = backbone.tokenizer
    texts = []
    for batch in batches:
        padded = tok.pad(
            {"input_ids": [ex.input_ids for ex in batch]}, padding_side="left", return_tensors="pt"
        )
        with torch.no_grad():
            out = model.generate(
                input_ids=padded["input_ids"].to(backbone.device),
                attention_mask=padded["attention_mask"].to(backbone.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        new = out[:, padded["input_ids"].shape[1] :].tolist()
        texts += [tok.decode(ids[: ids.index(tok.eos_token_id)] if tok.eos_token_id in ids else ids,
                             skip_special_tokens=True).strip() for ids in new]  # fmt: skip
    return texts


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    say = setup(args)
    warnings.filterwarnings("ignore", category=FutureWarning)  # peft asks a deprecated transformers API
    ours_bb = load_backbone(args.model, args.device)
    if ours_bb.is_seq2seq:
        print("generation_speed compares causal LMs only (peft CAUSAL_LM prompt tuning)", file=sys.stderr)
        return 2
    ref_bb = load_backbone(args.model, args.device)  # a second copy: peft's wrapping must not touch ours
    device = ours_bb.device
    task = get_task(args.task)
    generator = TextGenerator(ours_bb, task, max_target_tokens=args.max_new_tokens)
    data_dir = args.data_dir or default_data_dir()
    rows = load_splits(task.name, data_dir, seed=args.seed, max_eval=args.rows).validation
    examples = generator.encode(rows)
    if args.prompt:
        prompt = load_file(args.prompt)["prompt"].float()
    else:
        prompt = sample_init(ours_bb, args.prompt_length, args.seed)
    prompt = prompt.to(device)
    # the reference decodes the very batches ours does: the rows sorted longest first, cut in order
    ranked = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids), reverse=True)
    chunks = [ranked[s : s + args.batch_size] for s in range(0, len(ranked), args.batch_size)]
    batches = [[examples[i] for i in chunk] for chunk in chunks]
    reference = make_reference(ref_bb, prompt)
    say(
        f"{args.model} on {device}, {args.threads} threads | {task.name}: {len(examples)} validation rows "
        f"from {data_dir} in batches of {args.batch_size} | prompt {prompt.shape[0]} tokens "
        f"({args.prompt or 'the shared init'}) | at most {args.max_new_tokens} new tokens"
    )

    def ours() -> list[str]:
        return predictions(generator, prompt, examples, args.batch_size)

    def theirs() -> list[str]:
        texts = reference_texts(reference, ref_bb, batches, args.max_new_tokens)
        in_data_order: list[str] = [""] * len(examples)
        for i, text in zip([i for chunk in chunks for i in chunk], texts, strict=True):
            in_data_order[i] = text
        return in_data_order

    ours_out, batched_out = ours(), theirs()  # untimed: warm up, and the outputs compared
    # peft's `generate` drops position ids, so a left-padded row sees its padding counted in its
    # positions; each row alone is the reference's own greedy output, and what ours must match
    alone = reference_texts(reference, ref_bb, [[ex] for ex in examples], args.max_new_tokens)
    same = sum(a == b for a, b in zip(ours_out, alone, strict=True)) / len(examples)
    same_batched = sum(a == b for a, b in zip(ours_out, batched_out, strict=True)) / len(examples)
    say(
        f"same greedy output as the reference on each row alone: {same:.1%} of rows "
        f"(as its left-padded batches: {same_batched:.1%})"
    )

    def timed(run: Callable[[], list[str]]) -> float:
        sync(device)
        started = time.perf_counter()
        run()
        sync(device)
        return time.perf_counter() - started

    ours_s, ref_s = [], []
    for k in range(args.passes):
        order = [(ours, ours_s), (theirs, ref_s)]
        for run, seconds in order if k % 2 == 0 else order[::-1]:  # ABBA: cancel slow drifts
            seconds.append(timed(run))
        say(f"pass {k + 1}/{args.passes}: ours {ours_s[-1]:.2f} s, reference {ref_s[-1]:.2f} s")
    ours_time, ref_time = statistics.median(ours_s), statistics.median(ref_s)
    say(f"ours {ours_time:.2f} s, reference {ref_time:.2f} s: {ref_time / ours_time:.2f}x")
    result = {
        "model": args.model,
        "task": task.name,
        "rows": len(examples),
        "batch_size": args.batch_size,
        "prompt_length": int(prompt.shape[0]),
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
        "device": str(device),
        "reference_s": round(ref_time, 3),
        "ours_s": round(ours_time, 3),
        "ratio": round(ref_time / ours_time, 3),
        "same_outputs": round(same, 4),
        "same_outputs_padded_reference": round(same_batched, 4),
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
