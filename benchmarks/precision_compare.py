"""fp32 against bf16 for the frozen model: do results move more than the seed moves them?

`--precision auto` may take bf16 on a CPU only if this comparison holds (`backbones.CPU_BF16_AUTO`). It
runs stage 1 for each task x seed in both precisions (`dtvg run stage1 ... --precision P`, the same rows
and batches for both: the seed fixes the split and the batch order), reusing runs already in the runs
directory, then compares:

- seed noise: for each task and precision, how far the test score moves between seeds;
- precision: for each task and seed, how far it moves between fp32 and bf16 (same rows);
- the same tuned prompt (each fp32 run's) scored on its test rows in fp32 and in bf16: the share of
  predictions that agree, and the metric difference (precision at inference alone).

The verdict is "holds" when every fp32-bf16 difference of a task is below that task's smallest
seed-to-seed difference. The last line printed is a JSON object.

    python benchmarks/precision_compare.py --runs-dir /tmp/precision-runs     # rte, mrpc x seeds 0, 1
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from dtvg_engine.runs.events import read_state
from dtvg_engine.runs.runfolder import EVENTS, PROMPT, list_run_dirs, read_config
from dtvg_engine.runs.runstatus import summarize
from dtvg_engine.train import metrics
from dtvg_engine.train.backbones import DEFAULT_MODEL, load_backbone
from dtvg_engine.train.data import load_splits
from dtvg_engine.train.scoring import LabelScorer
from dtvg_engine.train.tasks import get_task
from dtvg_engine.train.training import predictions

from common import default_data_dir

PRECISIONS = ("fp32", "bf16")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs-dir", type=Path, required=True, help="where the runs are (or go)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--tasks", default="rte,mrpc")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--max-eval", type=int, default=100)
    parser.add_argument("--prompt-length", type=int, default=8)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    return parser.parse_args(argv)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The config values that make a run one of this comparison's."""
    return {
        "model": args.model,
        "steps": args.steps,
        "eval_every": args.eval_every,
        "max_eval": args.max_eval,
        "prompt_length": args.prompt_length,
    }


def find_runs(args: argparse.Namespace) -> dict[tuple[str, int, str], Path]:
    """The completed runs of this comparison in the runs directory, by (task, seed, precision)."""
    wanted = settings(args)
    found = {}
    if args.runs_dir.is_dir():
        for run_dir in list_run_dirs(args.runs_dir):
            config = read_config(run_dir)
            if config.get("stage") != "stage1" or any(config.get(k) != v for k, v in wanted.items()):
                continue
            if summarize(run_dir).status == "completed":
                found[config["task"], config["seed"], config["precision"]] = run_dir
    return found


def run_missing(args: argparse.Namespace, tasks: list[str], seeds: list[int]) -> None:
    """Run stage 1 for every (seed, precision) that lacks some task's run, all its tasks in one command."""
    have = find_runs(args)
    for seed, precision in itertools.product(seeds, PRECISIONS):
        todo = [t for t in tasks if (t, seed, precision) not in have]
        if not todo:
            continue
        command = [sys.executable, "-m", "dtvg_engine.cli", "run", "stage1", *todo, "--seed", str(seed)]
        command += ["--precision", precision, "--jobs", "auto", "--device", "cpu"]
        command += ["--runs-dir", str(args.runs_dir), "--data-dir", str(args.data_dir or default_data_dir())]
        for key, value in settings(args).items():
            command += [f"--{key.replace('_', '-')}", str(value)]
        subprocess.run(command, check=True, stdin=subprocess.DEVNULL, capture_output=True)


def same_prompt(args: argparse.Namespace, run_dir: Path) -> dict[str, float]:
    """The fp32 run's tuned prompt on its test rows, scored in fp32 and in bf16."""
    config = read_config(run_dir)
    task = get_task(config["task"])
    splits = load_splits(
        task.name,
        config["data_dir"],
        seed=config["seed"],
        k_shot=config["k_shot"],
        max_eval=config["max_eval"],
    )
    prompt = load_file(run_dir / PROMPT)["prompt"]
    preds = {}
    for precision in PRECISIONS:
        backbone = load_backbone(config["model"], "cpu", precision)
        rows = splits.train + splits.validation + splits.test  # as stage 1 fits the input length
        scorer = LabelScorer.fitted(backbone, task, config["max_input_tokens"], rows)
        items = scorer.encode(splits.test)
        preds[precision] = predictions(scorer, prompt, items, config["eval_batch_size"])
        golds = [gold for _, gold in items]
    scores = {p: metrics.score(task, metrics.compute(task, preds[p], golds)) for p in PRECISIONS}
    agree = sum(a == b for a, b in zip(preds["fp32"], preds["bf16"], strict=True)) / len(golds)
    return {"agreement": agree, "score_diff": abs(scores["fp32"] - scores["bf16"]), "rows": len(golds)}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    tasks = [t.strip() for t in args.tasks.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    run_missing(args, tasks, seeds)
    runs = find_runs(args)
    score = {key: read_state(run_dir / EVENTS).last_eval["test"].primary for key, run_dir in runs.items()}
    say(
        f"{args.model}, prompt {args.prompt_length}, {args.steps} steps, test on {args.max_eval} rows at most"
    )
    say(f"{'task':<6}{'seed':>5}{'fp32':>8}{'bf16':>8}{'|diff|':>8}")
    for task, seed in itertools.product(tasks, seeds):
        a, b = score[task, seed, "fp32"], score[task, seed, "bf16"]
        say(f"{task:<6}{seed:>5}{a:8.3f}{b:8.3f}{abs(a - b):8.3f}")

    holds = True
    per_task = {}
    for task in tasks:
        precision_diffs = [abs(score[task, s, "fp32"] - score[task, s, "bf16"]) for s in seeds]
        seed_diffs = [
            abs(score[task, s, p] - score[task, t, p])
            for p in PRECISIONS
            for s, t in itertools.combinations(seeds, 2)
        ]
        inference = [same_prompt(args, runs[task, s, "fp32"]) for s in seeds]
        per_task[task] = {
            "precision_diffs": [round(d, 4) for d in precision_diffs],
            "seed_diffs": [round(d, 4) for d in seed_diffs],
            "same_prompt_agreement": [round(r["agreement"], 4) for r in inference],
            "same_prompt_score_diffs": [round(r["score_diff"], 4) for r in inference],
        }
        holds = holds and max(precision_diffs) < min(seed_diffs)
        mean = statistics.fmean(precision_diffs)
        say(
            f"{task}: fp32-bf16 {max(precision_diffs):.3f} at most (mean {mean:.3f}); "
            f"seed to seed {min(seed_diffs):.3f}-{max(seed_diffs):.3f}; the same prompt in bf16 agrees on "
            f"{min(r['agreement'] for r in inference):.1%}+ of the test rows, score moves "
            f"{max(r['score_diff'] for r in inference):.3f} at most"
        )
    say(f"bf16 within seed noise: {'holds' if holds else 'does not hold'}")
    print(json.dumps({"model": args.model, "holds": holds, "tasks": per_task}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
