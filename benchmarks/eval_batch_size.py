"""Evaluation throughput by batch size and order: what `eval_batch_size`'s default is measured with.

Times `training.predictions` (the evaluation every run does) on real validation rows with whole inputs
(the fitted length: 95% of a task's inputs whole, at most 256 tokens), for each batch size in data order
and in length-sorted order, in interleaved rounds so machine noise hits every setting alike; reports the
median rows/s by the wall clock and by this process's CPU time (the steadier figure on a shared machine),
and the share of predictions equal to the first setting's (1.0 in fp32: sorting changes no
prediction). The last line printed is a JSON object.

    python benchmarks/eval_batch_size.py                         # smollm2-135m, rte + mrpc, fp32
    python benchmarks/eval_batch_size.py --precision bf16
    python benchmarks/eval_batch_size.py --model tiny-llama --rows 32 --rounds 1   # smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence

import torch

from dtvg_engine.train.backbones import DEFAULT_MODEL, load_backbone
from dtvg_engine.train.data import load_splits
from dtvg_engine.train.prompts import sample_init
from dtvg_engine.train.scoring import LabelScorer
from dtvg_engine.train.tasks import get_task
from dtvg_engine.train.training import predictions

from common import default_data_dir

SETTINGS = [("data", 8), ("data", 32), ("length", 8), ("length", 16), ("length", 32), ("length", 64)]
"""(order, batch size): the training batch size and today's default in data order, then sorted sizes."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--tasks", default="rte,mrpc", help="comma-separated (default rte,mrpc)")
    parser.add_argument("--rows", type=int, default=96, help="validation rows per task (default 96)")
    parser.add_argument("--prompt-length", type=int, default=8)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    for name in ("rows", "prompt_length", "rounds", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    torch.set_num_threads(args.threads)
    backbone = load_backbone(args.model, "cpu", args.precision)
    data_dir = args.data_dir or default_data_dir()
    prompt = sample_init(backbone, args.prompt_length, 0)
    work = []
    for name in args.tasks.split(","):
        task = get_task(name.strip())
        rows = load_splits(task.name, data_dir, seed=0, max_eval=max(200, args.rows)).validation[: args.rows]
        scorer = LabelScorer.fitted(backbone, task, None, rows)
        items = scorer.encode(rows)
        lengths = sorted(len(ids) for ids, _ in items)
        say(
            f"{task.name}: {len(items)} rows, inputs {lengths[0]}-{lengths[-1]} tokens (median "
            f"{lengths[len(lengths) // 2]}), cut at {scorer.max_input_tokens}"
        )
        work.append((scorer, items))
    total = sum(len(items) for _, items in work)
    say(f"{args.model} in {args.precision}, {args.threads} thread(s), prompt {args.prompt_length}")

    wall: dict[tuple[str, int], list[float]] = {s: [] for s in SETTINGS}
    cpu: dict[tuple[str, int], list[float]] = {s: [] for s in SETTINGS}
    first: list[float] | None = None
    agree: list[float] = []
    for k in range(args.rounds):
        for setting in SETTINGS if k % 2 == 0 else SETTINGS[::-1]:
            order, size = setting
            started, used = time.perf_counter(), time.process_time()
            preds = [p for scorer, items in work for p in predictions(scorer, prompt, items, size, order)]
            wall[setting].append(total / (time.perf_counter() - started))
            cpu[setting].append(total / (time.process_time() - used))
            first = first or preds
            agree.append(sum(a == b for a, b in zip(preds, first, strict=True)) / total)
            say(
                f"round {k + 1}: {order:>6} order, batch {size:3d}: {wall[setting][-1]:6.2f} rows/s wall, "
                f"{cpu[setting][-1]:6.2f} rows/s CPU"
            )
    result = {
        "model": args.model,
        "precision": args.precision,
        "threads": args.threads,
        "rows": total,
        "agreement": round(min(agree), 4),
        "rows_per_s_cpu": {f"{o}-{s}": round(statistics.median(cpu[(o, s)]), 3) for o, s in SETTINGS},
        "rows_per_s_wall": {f"{o}-{s}": round(statistics.median(wall[(o, s)]), 3) for o, s in SETTINGS},
    }
    say(f"predictions equal to the first setting's: at least {min(agree):.2%} of rows in every setting")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
