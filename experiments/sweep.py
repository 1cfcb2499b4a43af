"""The prompt learning-rate × prompt-length sweep behind `config.MODEL_DEFAULTS` (issue 10).

Stage 1 (a source's prompt, full data) is swept on snli and qqp, stage 2's target training (a
low-resource target's prompt, 32 shots; the T_t every grouped method starts from, and `pt`) on sst2 and
cb. Every setting is picked by the best validation score; no test score is read. The held-out tasks
(sst5, trec, ag_news, imdb) are not swept: they check that the chosen defaults generalize.

    .venv/bin/python experiments/sweep.py --runs-dir runs/sweep --data-dir ../shared/data

Runs are reused and resumed as a study's are (`pipeline.reuse_or_create`), so an interrupted sweep goes on
where it stopped. It writes `benchmarks/results/sweep.json` and prints a Markdown table per stage for
docs/sweep.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from dtvg_engine import config as configs
from dtvg_engine.method import tpv_plain
from dtvg_engine.runs.events import read_state
from dtvg_engine.runs.runfolder import EVENTS, INITS_DIR, PROMPT
from dtvg_engine.studies import pipeline
from dtvg_engine.train import metrics, tasks
from dtvg_engine.train.data import load_splits

MODEL = "smollm2-135m"
LRS = (3e-3, 3e-2, 0.3)  # 0.3: the papers' T5 rate; the DTVG paper took 1e-3 for Llama-3.2
LENGTHS = (8, 100)  # 100: the papers' prompt length
STAGES = {
    # stage: (tasks, settings); each setting runs on every task of its stage
    "stage1": (("snli", "qqp"), {"steps": 100, "eval_every": 50, "max_eval": 200}),
    "stage2": (("sst2", "cb"), {"steps": 30, "eval_every": 10, "max_eval": 200, "k_shot": 32}),
}


def plan(runs_dir: Path, data_dir: str) -> list[tuple[str, str, float, int, Path, str]]:
    """Every (stage, task, lr, length) of the grid with its run folder, reused when it exists."""
    rows = []
    for stage, (names, settings) in STAGES.items():
        for length in LENGTHS:
            for lr in LRS:
                for task in names:
                    wanted = configs.stage1_config(
                        task, model=MODEL, prompt_length=length, lr=lr, data_dir=data_dir, **settings
                    )
                    label = f"sweep-{stage}-{task}-r{length}-lr{lr:g}"
                    run_dir, status = pipeline.reuse_or_create(runs_dir, "stage1", label, wanted)
                    rows.append((stage, task, lr, length, run_dir, status))
    return rows


def validation_constant(task: str, settings: dict[str, Any], data_dir: str) -> float:
    """The best validation score of a constant answer: the floor the sweep's scores read against."""
    spec = tasks.get_task(task)
    split = load_splits(task, data_dir, seed=0, k_shot=settings.get("k_shot"), max_eval=settings["max_eval"])
    return metrics.constant_score(spec, [tasks.label_of(spec, row) for row in split.validation])


def token_norm(path: Path) -> float | None:
    """Mean L2 norm of a prompt's rows: how far the lr drove the tokens from the embeddings' scale."""
    if not path.is_file():
        return None
    (rows, width), values = tpv_plain.read_tensor(path, "prompt")
    norms = [sum(v * v for v in values[i * width : (i + 1) * width]) ** 0.5 for i in range(rows)]
    return statistics.mean(norms)


def collect(rows: list[tuple[str, str, float, int, Path, str]], data_dir: str) -> dict[str, Any]:
    """Best validation score per run, and per stage the setting with the best mean over its tasks."""
    out: dict[str, Any] = {"model": MODEL, "lrs": list(LRS), "lengths": list(LENGTHS), "stages": {}}
    for stage, (names, settings) in STAGES.items():
        runs = []
        for row_stage, task, lr, length, run_dir, _ in rows:
            if row_stage != stage:
                continue
            state = read_state(run_dir / EVENTS)
            best = state.best.primary if state.best else None
            done = state.finish is not None and state.finish.status == "completed"
            runs.append(
                {
                    "task": task,
                    "lr": lr,
                    "prompt_length": length,
                    "val_best": best,
                    "completed": done,
                    "seconds": state.duration,
                    "steps_done": state.last_step.step if state.last_step else 0,
                    "prompt_norm": token_norm(run_dir / PROMPT),
                    "run_id": run_dir.name,
                }
            )
        means = {}
        for length in LENGTHS:
            for lr in LRS:
                scores = [r["val_best"] for r in runs if r["lr"] == lr and r["prompt_length"] == length]
                if scores and all(s is not None for s in scores):
                    means[f"{length}/{lr:g}"] = statistics.mean(scores)
        best_key = max(means, key=means.get) if means else None
        runs_dir = rows[0][4].parent
        out["stages"][stage] = {
            "tasks": list(names),
            "settings": settings,
            "constants": {task: validation_constant(task, settings, data_dir) for task in names},
            "runs": runs,
            "mean_val": means,
            "best": best_key,
        }
    # The defaults: one lr and prompt length serve both stages, so the pick is the setting with the best
    # validation score averaged over all four tasks (fixed before the sweep's stage-2 runs were read).
    tables = out["stages"].values()
    shared = set.intersection(*(set(t["mean_val"]) for t in tables))
    overall = {key: statistics.mean(t["mean_val"][key] for t in tables) for key in shared}
    out["overall_mean_val"] = overall
    out["chosen"] = max(overall, key=overall.get) if overall else None
    out["init_norm"] = {
        length: token_norm(runs_dir / INITS_DIR / f"{configs.init_id(MODEL, length, 0)}.safetensors")
        for length in LENGTHS
    }
    return out


def markdown(results: dict[str, Any]) -> str:
    """One table per stage: validation score per task, their mean, by prompt length and lr."""
    lines = []
    for stage, table in results["stages"].items():
        names = table["tasks"]
        consts = ", ".join(f"{t} {table['constants'][t]:.3f}" for t in names)
        lines += [f"### {stage} ({consts} by a constant answer)", ""]
        lines += [
            "| r | lr | " + " | ".join(names) + " | mean | token norm | s/step |",
            "|---|---|" + "---|" * (len(names) + 3),
        ]
        for length in results["lengths"]:
            for lr in results["lrs"]:
                runs = [
                    next(
                        r
                        for r in table["runs"]
                        if (r["task"], r["lr"], r["prompt_length"]) == (t, lr, length)
                    )
                    for t in names
                ]
                cells = ["—" if run["val_best"] is None else f"{run['val_best']:.3f}" for run in runs]
                norms = [run["prompt_norm"] for run in runs if run["prompt_norm"] is not None]
                pace = [
                    run["seconds"] / run["steps_done"] for run in runs if run["seconds"] and run["steps_done"]
                ]
                key, means = f"{length}/{lr:g}", table["mean_val"]
                mark = " **best**" if table["best"] == key else ""
                cells += [_mean(means.get(key), ".3f") + mark, _mean(norms, ".1f"), _mean(pace, ".2f")]
                lines.append(f"| {length} | {lr:g} | " + " | ".join(cells) + " |")
        lines.append("")
    if results["chosen"]:
        lines.append(f"Chosen (best mean over all four tasks): r/lr = {results['chosen']}")
    return "\n".join(lines)


def _mean(values: float | list[float] | None, spec: str) -> str:
    """A table cell: the value (or the mean of the values) formatted, or a dash when there is none."""
    if isinstance(values, list):
        values = statistics.mean(values) if values else None
    return "—" if values is None else format(values, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/sweep"))
    parser.add_argument("--data-dir", required=True, help="the real task data, e.g. ../shared/data")
    parser.add_argument("--jobs", default="auto")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sweep.json"))
    args = parser.parse_args()
    data_dir = str(Path(args.data_dir).resolve())
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    rows = plan(args.runs_dir, data_dir)
    report: list[str] = []
    pipeline.execute(
        [(run_dir, status) for *_, run_dir, status in rows], configs.parse_jobs("--jobs", args.jobs), report
    )
    print("\n".join(report))
    results = collect(rows, data_dir)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
