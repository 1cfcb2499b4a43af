"""`dtvg run pipeline experiment.toml`: a whole study in one file, resumable across sessions.

Stage 1 runs for every task the study needs (sources at the `[stage1]` settings, but those the source
bank holds for the study's init, unless `bank = false`; targets with the target k-shot, once per seed),
reusing any finished run with the same settings; then stage 2 for every
target × method × seed, again reusing finished runs and resuming stopped or killed ones. It ends with a
results table: test primary metric, mean ± std over seeds per target and method, best method marked.

```toml
name = "fewshot"                 # results go to <runs_dir>/<name>-results.{md,json}
model = "smollm2-135m"
prompt_length = 20
sources = ["mnli", "qnli"]
targets = ["rte"]
methods = ["pt", "dtvg"]
seeds = [0, 1, 2]
jobs = "auto"                    # or a number; auto: as many runs at once as the cores or GPUs hold
precision = "auto"               # the frozen model: auto, fp32 or bf16
bank = true                      # sources the source bank holds for this init are not trained (false: are)
[stage1]                         # any training setting: steps, batch_size, lr, eval_every, ...
steps = 200
[stage2]                         # training settings, k_shot, grouping, lambda, source_scale_lr
steps = 100
k_shot = 32
[slurm]                          # with --executor slurm: each run's job (the --slurm-* options win)
partition = "gpu"
time = "4:00:00"
gpus = 1
options = { account = "mylab" }  # any other sbatch option
```

With `--executor slurm` each stage is one job array (at most `jobs` runs at a time), and what remains
of the pipeline is a job that waits for that array and runs the pipeline again from the next stage
(`slurm_submit.PipelineOnSlurm`), so nothing has to stay alive on the login node.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dtvg_engine import bank, method_registry, slurm, tasks, workers
from dtvg_engine import config as configs
from dtvg_engine.errors import UserError
from dtvg_engine.events import read_state
from dtvg_engine.runfolder import (
    EVENTS,
    create_run,
    list_run_dirs,
    read_config,
    read_pid,
    summarize,
    write_text_atomic,
)
from dtvg_engine.study import (
    Scores,
    banked_sources,
    entry_of,
    record_study,
    results_rows,
    study_init_id,
)
from dtvg_engine.studyfile import load_experiment, shared_settings

IGNORED_WHEN_MATCHING = {
    "run_id", "created", "runs_dir", "split", "init_sha256", "eval_batch_size", "eval_order",
}  # fmt: skip
"""Config keys that differ between otherwise identical runs (`stage1_runs` counts: a stage-2 run made
from other stage-1 vectors is another run); how evaluation is batched changes no prediction."""


def _same_settings(existing: dict[str, Any], wanted: dict[str, Any]) -> bool:
    keys = (set(existing) | set(wanted)) - IGNORED_WHEN_MATCHING
    return all(_same_value(k, existing.get(k), wanted.get(k)) for k in keys)


def _same_value(key: str, a: Any, b: Any) -> bool:
    """Equal settings; a data dir spelled two ways (through a symlink, `--data-dir` resolved or the
    study file's path as written) is the same data, so its runs are reused, not trained again."""
    if key == "data_dir" and isinstance(a, str) and isinstance(b, str) and a != b:
        hub = a.startswith(tasks.HUB_PREFIX) or b.startswith(tasks.HUB_PREFIX)  # a hub dataset is no path
        return not hub and os.path.realpath(a) == os.path.realpath(b)
    return a == b


def reuse_or_create(runs_dir: Path, stage: str, label: str, wanted: dict[str, Any]) -> tuple[Path, str]:
    """An existing run with these settings (and its status), or a new run folder ("new").

    A run that was queued by an earlier, interrupted pipeline but never launched (no worker pid, no
    Slurm job) counts as new, so it is run this time.
    """
    run_dir = find_same(runs_dir, wanted)
    if run_dir is None:
        return create_run(runs_dir, stage, label, wanted), "new"
    status = summarize(run_dir).status
    launched = read_pid(run_dir) is not None or slurm.job_id_of(run_dir) is not None
    return run_dir, "new" if status == "pending" and not launched else status


def find_same(runs_dir: Path, wanted: dict[str, Any]) -> Path | None:
    """The newest run with these settings, if there is one (nothing is created)."""
    return next(
        (d for d in reversed(list_run_dirs(runs_dir)) if _same_settings(read_config(d), wanted)), None
    )


def execute(plan: list[tuple[Path, str]], jobs: int, report: list[str], on_slurm: Any = None) -> list[str]:
    """Run what is new, resume what was stopped, killed or failed; leave completed and live runs alone.

    `on_slurm` (a `slurm_submit.PipelineOnSlurm`): submit them as one job array instead; return the
    Slurm jobs this stage waits for (those submitted and those of its live Slurm runs).
    """
    from dtvg_engine.watch import run_foreground

    todo = [run_dir for run_dir, status in plan if status in ("new", "stopped", "killed", "failed")]
    for run_dir, status in plan:
        if status == "completed":
            report.append(f"reused {run_dir.name}")
        elif status in ("stopped", "killed", "failed"):
            report.append(f"resuming {run_dir.name} ({status})")
        elif status in ("running", "pending"):
            report.append(f"{run_dir.name} is {status} in another process; not started twice")
    if on_slurm is not None:
        live = [
            job
            for run_dir, status in plan
            if status in ("running", "pending") and (job := slurm.active_job(run_dir))
        ]
        width = workers.array_width(jobs, len(todo))
        submitted = on_slurm.submit(todo, width) if todo else []
        if submitted:
            array = submitted[0].split("_")[0]  # an array's tasks are <job>_<index>
            report.append(f"submitted {len(todo)} run(s) to Slurm as job {array}, {width} at a time")
        return submitted + live
    if todo:
        for run_dir, status in zip(todo, run_foreground(todo, jobs), strict=True):
            if status != "completed":
                report.append(
                    f"{run_dir.name} ended {status}: {summarize(run_dir).error or 'see worker.log'}"
                )
    return []


def run_pipeline(
    path: Path, runs_dir: Path, jobs: int | None = None, data_dir: str | None = None, on_slurm: Any = None
) -> dict:
    """Run (or resume) the whole study and write its results table; return the results.

    `on_slurm` (a `slurm_submit.PipelineOnSlurm`): submit the runs of its stage (`on_slurm.stage`) and
    what follows instead; then the results hold only the name and the report.
    """
    spec = load_experiment(path)
    if data_dir:
        spec["data_dir"] = data_dir
    ident = study_init_id(spec)
    bank.check_init(runs_dir, ident)  # every run of this init would refuse a P_init not the bank's
    record_study(runs_dir, spec, path)  # so the dashboard can open and stop the study
    jobs = jobs or spec["jobs"]
    shared = shared_settings(spec)
    stage1 = spec.get("stage1", {})
    stage2 = spec.get("stage2", {})
    report: list[str] = []

    banked = banked_sources(spec)
    if banked:
        line = f"from the source bank ({ident}), not trained: {', '.join(banked)} (bank = false trains them)"
        print(line, flush=True)
        report.append(line)
    source_plan = [
        reuse_or_create(runs_dir, "stage1", task, configs.stage1_config(task, **shared, **stage1))
        for task in spec["sources"]
        if task not in banked
    ]
    plan1 = list(source_plan)
    # A target's own vector is tuned per seed, on that seed's k-shot sample and split (the papers run
    # each few-shot trial through both stages), so no trial sees another's shots or checks its T_t on
    # rows that are another trial's test set. It writes as long a text as the target's stage-2 runs do.
    target_stage1 = {
        **stage1,
        "k_shot": stage2.get("k_shot", stage1.get("k_shot")),
        "max_target_tokens": stage2.get("max_target_tokens", stage1.get("max_target_tokens")),
    }
    target_runs: dict[tuple[str, int], Path] = {}
    if any(method_registry.parse(entry)[0].needs_target_run for entry in spec["methods"]):
        for task in spec["targets"]:
            for seed in spec["seeds"]:
                config = configs.stage1_config(task, **shared, **{**target_stage1, "seed": seed})
                plan1.append(reuse_or_create(runs_dir, "stage1", f"{task}-s{seed}", config))
                target_runs[task, seed] = plan1[-1][0]
    if _run_stage(1, plan1, jobs, report, on_slurm):
        return {"name": spec["name"], "report": report}

    finished = {run_dir for run_dir, _ in plan1 if summarize(run_dir).status == "completed"}
    source_runs = [run_dir.name for run_dir, _ in source_plan if run_dir in finished]
    plan2 = []
    for target in spec["targets"]:
        for method in spec["methods"]:
            for seed in spec["seeds"]:
                own = target_runs.get((target, seed))
                if method_registry.parse(method)[0].needs_target_run and own not in finished:
                    report.append(
                        f"skipped {target}/{method}/seed {seed}: stage-1 run of {target} did not finish"
                    )
                    continue
                try:
                    wanted = configs.stage2_config(
                        target,
                        spec["sources"],
                        method,
                        runs_dir,
                        source_runs + ([own.name] if own in finished else []),
                        bank_tasks=banked,
                        **shared,
                        **{**stage2, "seed": seed},
                    )
                except UserError as exc:  # a stage-1 run it needs failed: report, carry on
                    report.append(f"skipped {target}/{method}/seed {seed}: {exc}")
                    continue
                label = f"{target}-{method_registry.run_label(method)}-s{seed}"
                plan2.append(reuse_or_create(runs_dir, "stage2", label, wanted))
    if _run_stage(2, plan2, jobs, report, on_slurm):
        return {"name": spec["name"], "report": report}

    results = results_table(spec, [run_dir for run_dir, _ in plan2])
    results["report"] = report
    statuses = {run_dir.name: summarize(run_dir).status for run_dir, _ in plan1 + plan2}
    results["unfinished"] = {run_id: status for run_id, status in statuses.items() if status != "completed"}
    write_results(runs_dir, results)
    return results


def _run_stage(stage: int, plan: list[tuple[Path, str]], jobs: int, report: list[str], on_slurm: Any) -> bool:
    """Run one stage's plan; True when it went to Slurm and the pipeline goes on in a job after it.

    A pass on Slurm after this stage (`on_slurm.stage` > `stage`) leaves the stage as it is: a run
    that failed there is not submitted again and again.
    """
    if on_slurm is not None and on_slurm.stage > stage:
        return False
    waiting = execute(plan, jobs, report, on_slurm)
    if not waiting:
        return False
    report.append(f"the rest of the pipeline: Slurm job {on_slurm.continue_after(waiting)}, once they end")
    return True


def test_primary(run_dir: Path) -> float | None:
    """The test-split primary metric of a completed run (at its best validation checkpoint)."""
    test = read_state(run_dir / EVENTS).last_eval.get("test")
    return test.primary if test is not None and summarize(run_dir).status == "completed" else None


def results_table(spec: dict[str, Any], run_dirs: list[Path]) -> dict[str, Any]:
    """Mean ± std over seeds of the test primary metric, per target and method."""
    scores: Scores = {}
    for run_dir in run_dirs:
        config = read_config(run_dir)
        value = test_primary(run_dir)
        if value is not None:
            scores.setdefault((config["target"], entry_of(spec, config)), {})[config["seed"]] = value
    return {"name": spec["name"], "rows": results_rows(spec, scores)}


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# {results['name']}: test score (mean ± std over seeds; **best** per target)",
        "",
        "| target | method | metric | score | seeds |",
        "|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        if row["mean"] is None:
            score = "—"
        else:
            score = f"{100 * row['mean']:.1f} ± {100 * row['std']:.1f}"
            score = f"**{score}**" if row.get("best") else score
        lines.append(f"| {row['target']} | {row['method']} | {row['metric']} | {score} | {row['seeds']} |")
    return "\n".join(lines) + "\n"


def results_paths(runs_dir: Path, name: str) -> tuple[Path, Path]:
    """Where a study's results table goes: `<runs_dir>/<name>-results.md` and `.json`."""
    return runs_dir / f"{name}-results.md", runs_dir / f"{name}-results.json"


def write_results(runs_dir: Path, results: dict[str, Any]) -> None:
    md, js = results_paths(runs_dir, results["name"])
    write_text_atomic(md, markdown(results))
    write_text_atomic(js, json.dumps(results, indent=2))
