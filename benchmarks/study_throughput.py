"""Wall time of a small study with whole inputs: the reference settings against the defaults.

One fixed study on real data (`STUDY`: two sources and a target, `pt` and `dtvg` over two seeds, so four
stage-1 runs, the target's per seed, and four stage-2 runs, each with validations and a test) runs twice,
through the real `dtvg run pipeline` in child processes of this one, each in its own runs directory:

- the **reference** settings, how a study ran before issue 13: the frozen model in fp32, one worker at a
  time with every core, evaluation batches in data order (`eval_order = "data"`) at the training batch
  size (8; the default was then 32, which `eval_batch_size.py` measured slower in data order, so the
  reference is the faster of the two);
- the **defaults**: `--precision auto`, `--jobs auto` (one worker per share of the cores, or per GPU),
  evaluation in length-sorted batches of the default size.

Inputs are whole in both (the fitted length: 95% of a task's inputs whole, at most 256 tokens). It prints
both wall times, their ratio, the CPU seconds the workers used, and the largest difference between the
two settings' test metrics over every run; the last line is a JSON object with `reference_s`, `ours_s`,
`ratio` and `metric_max_abs_diff`. Target: ratio >= 1.5 with metric_max_abs_diff <= 0.05.

    python benchmarks/study_throughput.py                         # smollm2-135m, CPU
    python benchmarks/study_throughput.py --device cuda           # on a GPU machine
    python benchmarks/study_throughput.py --model tiny-llama      # fast smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dtvg_engine.runs.events import read_state
from dtvg_engine.runs.runfolder import EVENTS, list_run_dirs, read_config
from dtvg_engine.train.backbones import DEFAULT_MODEL

from common import default_data_dir

STUDY = """
name = "throughput"
model = "{model}"
device = "{device}"
prompt_length = 8
sources = ["mnli", "qnli"]
targets = ["rte"]
methods = ["pt", "dtvg"]
seeds = [0, 1]
bank = false
{top}
[stage1]
steps = 8
eval_every = 4
max_eval = 100
{stage}
[stage2]
steps = 8
eval_every = 4
max_eval = 100
k_shot = 32
{stage}
"""
"""The study (prompt length 8, the smollm2-135m default; every source trained here, never taken from the
source bank); `top` and `stage` take a setting's overrides."""

REFERENCE = {"top": 'precision = "fp32"\njobs = 1', "stage": 'eval_order = "data"\neval_batch_size = 8'}
"""The settings before issue 13. Unset, `jobs = 1` gives the one worker every core (torch's default)."""
DEFAULTS = {"top": "", "stage": ""}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument(
        "--keep", type=Path, default=None, help="keep both runs directories under this folder"
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    return parser.parse_args(argv)


def run_study(
    name: str, overrides: dict[str, str], args: argparse.Namespace, root: Path
) -> tuple[float, float]:
    """Run the study with these overrides in `root/name`; its wall seconds and its workers' CPU seconds."""
    study = root / f"{name}.toml"
    study.write_text(STUDY.format(model=args.model, device=args.device, **overrides))
    runs = root / name
    if runs.exists():
        raise SystemExit(f"{runs} exists already; give --keep an empty folder")
    runs.mkdir()
    command = [
        sys.executable,
        "-m",
        "dtvg_engine.cli",
        "run",
        "pipeline",
        str(study),
        "--runs-dir",
        str(runs),
    ]
    command += ["--data-dir", str(args.data_dir or default_data_dir())]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"the {name} study failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def test_metrics(runs_dir: Path) -> dict[tuple[Any, ...], dict[str, float]]:
    """Every run's test metrics, keyed by what makes it that run of the study (not its id or time)."""
    found = {}
    for run_dir in list_run_dirs(runs_dir):
        config = read_config(run_dir)
        if config["stage"] == "stage1":
            key = ("stage1", config["task"], config["seed"], config["k_shot"])
        else:
            key = ("stage2", config["target"], config["method"], config["seed"])
        found[key] = read_state(run_dir / EVENTS).last_eval["test"].metrics
    return found


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    with tempfile.TemporaryDirectory(prefix="dtvg-throughput-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        say(f"{args.model} on {args.device}, {os.cpu_count()} cores; runs under {root}")
        times = {}
        for name, overrides in (("reference", REFERENCE), ("defaults", DEFAULTS)):
            say(f"{name}: running the study ...")
            times[name] = run_study(name, overrides, args, root)
            say(f"{name}: {times[name][0]:.1f} s wall, workers {times[name][1]:.1f} CPU s")
        reference, ours = test_metrics(root / "reference"), test_metrics(root / "defaults")

    if reference.keys() != ours.keys():
        raise SystemExit(f"the two studies ran different runs: {sorted(reference)} vs {sorted(ours)}")
    diffs = {key: max(abs(reference[key][m] - ours[key][m]) for m in reference[key]) for key in reference}
    for key, diff in sorted(diffs.items()):
        name = " ".join(map(str, key))
        say(f"  {name:<22} test {reference[key]} vs {ours[key]}: max |diff| {diff:.4f}")
    (ref_wall, ref_cpu), (our_wall, our_cpu) = times["reference"], times["defaults"]
    say(f"reference {ref_wall:8.1f} s   (fp32, 1 worker x all cores, data-order evaluation)")
    say(f"defaults  {our_wall:8.1f} s   (--precision auto, --jobs auto, length-sorted evaluation)")
    say(
        f"ratio     {ref_wall / our_wall:8.2f}x   (CPU seconds: {ref_cpu:.0f} vs {our_cpu:.0f}, "
        f"{ref_cpu / our_cpu:.2f}x)"
    )
    result = {
        "model": args.model,
        "device": args.device,
        "runs": len(diffs),
        "reference_s": round(ref_wall, 1),
        "ours_s": round(our_wall, 1),
        "ratio": round(ref_wall / our_wall, 3),
        "reference_cpu_s": round(ref_cpu, 1),
        "ours_cpu_s": round(our_cpu, 1),
        "metric_max_abs_diff": round(max(diffs.values()), 4),
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
