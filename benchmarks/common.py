"""What the two training-speed benchmarks share: their options, the data folder, setup and device sync.

`step_speed.py` and `dtvg_overhead.py` time interleaved blocks of two kinds of step on the same batches;
they take the same options for the model, task, batch, prompt, timing blocks, threads and device, and
encode the task's rows the same way (`task_scorer`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from dtvg_engine.train.backbones import DEFAULT_MODEL, Backbone
from dtvg_engine.train.generation import TextGenerator
from dtvg_engine.train.scoring import LabelScorer
from dtvg_engine.train.tasks import Task

MAX_INPUT_TOKENS = 64
"""Classification inputs are cut to this length, as docs/performance.md measured them (runs fit their
length to the data); generation tasks keep the engine's 128-token caps on inputs and targets."""
COUNTS = ("batch_size", "prompt_length", "steps", "block", "threads")
"""Options that must be positive."""


def default_data_dir() -> Path:
    """`$DTVG_DATA_DIR`, else the project's shared data next to this checkout."""
    env = os.environ.get("DTVG_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def timing_parser(description: str, steps: int, block: int) -> argparse.ArgumentParser:
    """The options both benchmarks take; each adds its own before parsing."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--task", default="rte", help="the task trained (default rte)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--prompt-length", type=int, default=100)
    parser.add_argument("--steps", type=int, default=steps, help=f"timed steps of each (default {steps})")
    parser.add_argument("--block", type=int, default=block, help=f"steps per timed block (default {block})")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps of each first (default 1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    return parser


def task_scorer(backbone: Backbone, task: Task) -> LabelScorer:
    """How the benchmarks encode and score `task`: a TextGenerator (teacher-forced loss over the target
    tokens) for a generation task, else a LabelScorer with inputs cut to MAX_INPUT_TOKENS."""
    if task.generation:
        return TextGenerator(backbone, task)
    return LabelScorer(backbone, task, max_input_tokens=MAX_INPUT_TOKENS)


def inputs_note(scorer: LabelScorer) -> str:
    """The length limits the benchmark's batches were cut to, for its header line."""
    if isinstance(scorer, TextGenerator):
        return f"inputs <= {scorer.max_input_tokens}, targets <= {scorer.max_target_tokens} tokens"
    return f"inputs <= {scorer.max_input_tokens} tokens"


def parse_timing_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, counts: Sequence[str] = COUNTS
) -> argparse.Namespace:
    """Parse, refusing non-positive counts and a negative warmup with argparse's usage error."""
    args = parser.parse_args(argv)
    for name in counts:
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    return args


def setup(args: argparse.Namespace) -> Callable[..., None]:
    """Quiet the hub's progress bars, fix threads and seed; return the printer (silent with --json)."""
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return (lambda *a, **k: None) if args.json else (lambda *a, **k: print(*a, **k, flush=True))


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer read afterwards covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
