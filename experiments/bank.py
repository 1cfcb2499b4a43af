"""Train the source bank's prompts (issue 10): full-data stage-1 runs of the study's source tasks on
`smollm2-135m` at the model's swept defaults (`config.MODEL_DEFAULTS`, docs/sweep.md).

    .venv/bin/python experiments/bank.py --runs-dir runs/bank --data-dir ../shared/data [--check]
    .venv/bin/python scripts/ship_bank.py runs/bank/*-stage1-bank-*    # then ship the vectors

Runs are reused and resumed as a study's are (`pipeline.reuse_or_create`): stop it with Ctrl-C (or
`dtvg runs stop`) and start it again to go on from the last checkpoint, across sessions too. A source
goes into the study only when its best validation score is at least 10 points above its validation
constant (`--check` prints that for each run).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dtvg_engine import config as configs
from dtvg_engine.runs.events import read_state
from dtvg_engine.runs.runfolder import EVENTS, read_config
from dtvg_engine.studies import pipeline
from dtvg_engine.train.stage1 import VALIDATION_CONSTANT_KEY

MODEL = "smollm2-135m"
SOURCES = ("snli", "qnli", "qqp", "sst5", "ag_news", "trec")
"""NLI, QA entailment, paraphrase, sentiment, topic, question type. trec was added at 14:30 on 2026-12-01,
before any study run, when qqp stood 5 points over its constant at step 400: the study needs 4 sources
that learned, and a short-input task trains fast."""
SETTINGS = {"steps": 800, "eval_every": 100, "max_eval": 200}  # each source: 800 steps x 8 = 6,400 rows


def wanted(task: str, data_dir: str) -> dict:
    """The config of a source's bank run."""
    return configs.stage1_config(task, model=MODEL, data_dir=data_dir, **SETTINGS)


def plan(runs_dir: Path, data_dir: str) -> list[tuple[Path, str]]:
    """Each source's run folder, reused when one with these settings exists."""
    return [
        pipeline.reuse_or_create(runs_dir, "stage1", f"bank-{task}", wanted(task, data_dir))
        for task in SOURCES
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/bank"))
    parser.add_argument("--data-dir", required=True, help="the real task data, e.g. ../shared/data")
    parser.add_argument("--jobs", default="auto")
    parser.add_argument("--check", action="store_true", help="only print each run's progress and best score")
    args = parser.parse_args()
    data_dir = str(Path(args.data_dir).resolve())
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    if args.check:  # read only: a run not made yet is not made here
        found = [pipeline.find_same(args.runs_dir, wanted(task, data_dir)) for task in SOURCES]
        runs = [run_dir for run_dir in found if run_dir is not None]
    else:
        planned = plan(args.runs_dir, data_dir)
        report: list[str] = []
        pipeline.execute(planned, configs.parse_jobs("--jobs", args.jobs), report)
        print("\n".join(report))
        runs = [run_dir for run_dir, _ in planned]
    for run_dir in runs:
        state = read_state(run_dir / EVENTS)
        step = state.last_step.step if state.last_step else 0
        best = f"{state.best.primary:.3f} at step {state.best.step}" if state.best else "—"
        floor = read_config(run_dir).get("split", {}).get(VALIDATION_CONSTANT_KEY)
        margin = f", {state.best.primary - floor:+.3f} over a constant answer" if state.best and floor else ""
        print(f"{run_dir.name}: step {step}, best validation {best}{margin}")


if __name__ == "__main__":
    main()
