"""`dtvg run pipeline experiment.toml`: a whole study in one file, resumable across sessions.

Stage 1 runs for every task the study needs (sources at the `[stage1]` settings, but those the source
bank holds for the study's init, unless `bank = false`; targets with the target k-shot, once per seed),
reusing any finished run with the same settings; then stage 2 for every
target × method × seed, again reusing finished runs and resuming stopped or killed ones (a `pt` entry at
the very settings of a target's own stage-1 run is that run). Each run it makes records its slot of the
plan (`studyplan`). It ends with the study's results table (`studyresults.Results`): test primary metric,
mean ± std over seeds per target and method, best method marked, the constant floor.

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
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dtvg_engine import config as configs
from dtvg_engine.errors import UserError
from dtvg_engine.method import bank, method_registry
from dtvg_engine.runs import slurm, workers
from dtvg_engine.runs.atomic import write_text_atomic
from dtvg_engine.runs.runfolder import EVENTS, create_run, list_run_dirs, read_config
from dtvg_engine.runs.runowner import read_pid
from dtvg_engine.runs.runstatus import LIVE_STATUSES, summarize
from dtvg_engine.studies.study import Runs
from dtvg_engine.studies.studyfile import StudySpec, load_experiment
from dtvg_engine.studies.studyplan import SlotKey, banked_sources, plan, study_init_id
from dtvg_engine.studies.studyprocess import claim_study, record_study
from dtvg_engine.studies.studyresults import Results, table_of
from dtvg_engine.train import tasks
from dtvg_engine.train.modelcache import check_cache

IGNORED_WHEN_MATCHING = {
    "run_id", "created", "runs_dir", "split", "init_sha256", "eval_batch_size", "eval_order", "slot",
}  # fmt: skip
"""Config keys that differ between otherwise identical runs (`stage1_runs` counts: a stage-2 run made
from other stage-1 vectors is another run); how evaluation is batched changes no prediction, and a run
made for another study's slot (or before runs recorded theirs) is reused as it is."""


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
    from dtvg_engine.runs.watch import run_foreground

    todo = [run_dir for run_dir, status in plan if status in ("new", "stopped", "killed", "failed")]
    for run_dir, status in plan:
        if status == "completed":
            report.append(f"reused {run_dir.name}")
        elif status in ("stopped", "killed", "failed"):
            report.append(f"resuming {run_dir.name} ({status})")
        elif status in LIVE_STATUSES:
            report.append(f"{run_dir.name} is {status} in another process; not started twice")
    if on_slurm is not None:
        live = [
            job for run_dir, status in plan if status in LIVE_STATUSES and (job := slurm.active_job(run_dir))
        ]
        width = workers.array_width(jobs, len(todo))
        try:
            submitted = on_slurm.submit(todo, width) if todo else []
        except UserError:  # sbatch refused: the runs made for it go again, as for a single run
            for run_dir, status in plan:
                if status == "new" and not (run_dir / EVENTS).exists():
                    shutil.rmtree(run_dir, ignore_errors=True)
            raise
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


@dataclass
class Outcome:
    """What a pass of the pipeline did: its report lines and, once every stage ran here, the table."""

    name: str
    report: list[str]
    table: Results | None = None
    """None when the rest of the pipeline went to Slurm (the last pipeline job writes the results)."""
    unfinished: dict[str, str] = field(default_factory=dict)
    """Run id → status of each of the study's runs that did not complete."""


def run_pipeline(
    path: Path, runs_dir: Path, jobs: int | None = None, data_dir: str | None = None, on_slurm: Any = None
) -> Outcome:
    """Run (or resume) the whole study and write its results table.

    Each slot of the study's plan (`studyplan.plan`) gets a run: a finished one with its settings is
    reused, a stopped one resumed, else one is made, recording its slot. `on_slurm` (a
    `slurm_submit.PipelineOnSlurm`): submit the runs of its stage (`on_slurm.stage`) and what follows
    instead; then the outcome holds only the name and the report.
    """
    spec = load_experiment(path)
    if data_dir:
        spec = spec.with_data_dir(data_dir)
    wait_s = 60.0 if on_slurm is not None and on_slurm.stage > 1 else 0.0  # its submitter may be exiting
    with claim_study(runs_dir, spec.name, wait_s):  # a second pipeline of the study is refused
        return _run_study(path, spec, runs_dir, jobs, on_slurm)


def _run_study(path: Path, spec: StudySpec, runs_dir: Path, jobs: int | None, on_slurm: Any) -> Outcome:
    """`run_pipeline`, once the study is this process's."""
    ident = study_init_id(spec)
    bank.check_init(runs_dir, ident)  # every run of this init would refuse a P_init damaged or not the bank's
    if on_slurm is None:  # a Slurm job converts the model into its node's cache
        check_cache(spec.shared.get("model", configs.TRAINING_DEFAULTS["model"]))
    record_study(runs_dir, spec, path)  # so the dashboard can open and stop the study
    jobs = jobs or spec.jobs
    outcome = Outcome(spec.name, [])

    banked = banked_sources(spec)
    if banked:
        line = f"from the source bank ({ident}), not trained: {', '.join(banked)} (bank = false trains them)"
        print(line, flush=True)
        outcome.report.append(line)
    slots = plan(spec, banked)
    filled: dict[SlotKey, tuple[Path, str]] = {}
    for slot in slots:
        if slot.stage == "stage1":
            config = configs.stage1_config(slot.task, **slot.settings) | {"slot": slot.record(spec.name)}
            filled[slot.key] = reuse_or_create(runs_dir, "stage1", slot.label, config)
    if _run_stage(1, list(filled.values()), jobs, outcome.report, on_slurm):
        return outcome

    finished = {run_dir for run_dir, _ in filled.values() if summarize(run_dir).status == "completed"}
    source_runs = [
        run_dir.name for key, (run_dir, _) in filled.items() if key[3] is None and run_dir in finished
    ]
    stage2: dict[SlotKey, tuple[Path, str]] = {}
    for slot in slots:
        if slot.stage != "stage2" or slot.same_as is not None:  # a twin is its stage-1 slot's run
            continue
        own = filled.get(("stage1", slot.task, "pt", slot.seed), (None, ""))[0]
        where = f"{slot.task}/{slot.entry}/seed {slot.seed}"
        if method_registry.parse(slot.entry)[0].needs_target_run and own not in finished:
            outcome.report.append(f"skipped {where}: stage-1 run of {slot.task} did not finish")
            continue
        try:
            wanted = configs.stage2_config(
                slot.task,
                list(spec.sources),
                slot.entry,
                runs_dir,
                source_runs + ([own.name] if own in finished else []),
                bank_tasks=banked,
                **slot.settings,
            )
        except UserError as exc:  # a stage-1 run it needs failed: report, carry on
            outcome.report.append(f"skipped {where}: {exc}")
            continue
        wanted["slot"] = slot.record(spec.name)
        stage2[slot.key] = reuse_or_create(runs_dir, "stage2", slot.label, wanted)
    if _run_stage(2, list(stage2.values()), jobs, outcome.report, on_slurm):
        return outcome

    filled |= stage2
    twins = {slot.key: filled[slot.same_as] for slot in slots if slot.same_as in filled}
    runs = Runs.read(runs_dir)
    table = table_of(spec, {key: run_dir for key, (run_dir, _) in (filled | twins).items()}, runs)
    statuses = {run_dir.name: runs.status(run_dir.name) for run_dir, _ in filled.values()}
    outcome.unfinished = {run_id: status for run_id, status in statuses.items() if status != "completed"}
    outcome.table = table
    write_results(runs_dir, outcome, table)
    return outcome


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


def unfinished_line(outcome: Outcome) -> str | None:
    """The line naming the study's runs that did not complete, and how each ended; None when all did."""
    if not outcome.unfinished:
        return None
    runs = ", ".join(f"{run_id} ({status})" for run_id, status in outcome.unfinished.items())
    return f"{len(outcome.unfinished)} run(s) did not complete: {runs}"


def results_paths(runs_dir: Path, name: str) -> tuple[Path, Path]:
    """Where a study's results table goes: `<runs_dir>/<name>-results.md` and `.json`."""
    return runs_dir / f"{name}-results.md", runs_dir / f"{name}-results.json"


def write_results(runs_dir: Path, outcome: Outcome, table: Results) -> None:
    """The study's table as `dtvg runs report` and the dashboard write it (`studyresults.Results`), and
    in the JSON what the pass reported and which runs did not complete."""
    md, js = results_paths(runs_dir, outcome.name)
    write_text_atomic(md, table.markdown)
    document = table.document() | {"report": outcome.report, "unfinished": outcome.unfinished}
    write_text_atomic(js, json.dumps(document, indent=2))
