"""A run's status and its summary: the one set of status rules, read from its folder's files.

Standard library only, because the terminal UI imports it and must start in well under a second.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dtvg_engine.runs import slurm
from dtvg_engine.runs.events import TERMINAL_STATUSES, RunState, read_state
from dtvg_engine.runs.runfolder import EVENTS, PIDFILE, read_config
from dtvg_engine.runs.runmeta import read_meta
from dtvg_engine.runs.runowner import exit_reason, pid_suspended, read_pid, run_owner

STATUSES = ("pending", "running", "suspended", "completed", "failed", "stopped", "killed")
"""Every status `summarize` reports: the three `run_finished` statuses plus four derived ones."""
LIVE_STATUSES = ("pending", "running", "suspended")
"""Statuses of a run a worker owns (or, pending, may own in a moment): its status can change unseen."""

UNFINISHED_STATUSES = ("pending", "running", "stopped", "killed", "failed")
"""Statuses a run can be resumed from once no worker owns it: `pending` is a run queued but never
launched (a foreground `dtvg run` or a pipeline interrupted before its turn); `running` is how a run
that was running looks to the launcher that has just claimed it to start it again."""


@dataclass
class RunSummary:
    """One run at a glance: what the history index stores and listings show."""

    run_id: str
    """The run folder's name (config.json's `run_id` too, unless the folder was renamed or copied)."""
    stage: str
    """"stage1" or "stage2"."""
    method: str
    """Stage 2 method (`dtvg`, `spot`, …); "pt" for stage 1."""
    task: str
    """The task tuned in stage 1, or the target task of stage 2."""
    model: str
    """Backbone id or path."""
    status: str
    """One of `STATUSES`; see `derive_status`."""
    best_metric: float | None = None
    """`primary` of the last eval marked best."""
    metric_name: str | None = None
    """Name of the primary metric, from config "primary_metric" when present."""
    step: int = 0
    """Last training step seen in the events."""
    total_steps: int | None = None
    """Planned steps, from config "steps"."""
    started: float | None = None
    """Unix time of the first `run_started`."""
    ended: float | None = None
    """Unix time of the last `run_finished`, when the run is finished."""
    duration: float | None = None
    """Seconds spent running, summed over resumed segments (an unfinished one up to its last event)."""
    pid: int | None = None
    """Worker pid: the owner's (`run_owner`) while a worker owns the run, else from the last
    `run_started`, else (and while pending) from worker.pid."""
    error: str | None = None
    """The error of the last `run_finished`, when the run is finished."""
    tags: list[str] = field(default_factory=list)
    """User tags, from meta.json."""
    note: str = ""
    """User note, from meta.json."""
    run_dir: str = ""
    """Path of the run folder."""
    executor: str = "local"
    """Where the run runs: "slurm" when it was submitted to Slurm (its `slurm.json`), else "local"."""
    job_id: str | None = None
    """The Slurm job id of its latest submission; None when local."""
    host: str | None = None
    """The host the last segment ran on, when its `run_started` says."""
    slurm_state: str | None = None
    """Its Slurm job as `squeue` shows it ("queued (Priority)", "running"); None once it left the queue."""

    def to_dict(self) -> dict[str, Any]:
        """The fields as a new dict, in field order (what `asdict` gives, at a tenth of its cost: the
        dashboard writes back thousands)."""
        return {**vars(self), "tags": list(self.tags)}


def derive_status(
    state: RunState, launched_pid: int | None, launched_at: float | None, owner: int | None
) -> str:
    """The run's status from its folded events, its pidfile (pid and mtime, None when absent) and the
    worker owning it (`run_owner`: the pid holding its worker lock, 0 while launched, None when none).

    A run is live only while a worker owns it: the lock dies with its worker, while a pid in a file
    may by now name any other process (pids are reused).
    - the last lifecycle event is `run_finished`: its status;
    - the last one is `run_started`: "running" while a worker owns the run, else "killed";
    - no lifecycle event yet: "pending" while a worker owns the run or none was ever launched (a queued
      run, a foreground run about to start), "killed" once the launched worker is gone without a word.
    A newer launch (pidfile written after the last lifecycle event by another pid, which owns the run)
    is "pending" whatever came before: a resumed run whose worker is still loading.
    A live run whose worker is stopped (SIGSTOP, Ctrl-Z) is "suspended": it holds the run, so it is
    not resumed or removed, but it makes no progress until it gets SIGCONT (`dtvg runs stop` sends it).
    """
    live = owner is not None
    last_time = state.lifecycle_time
    start = state.last_start
    if last_time is None:
        status = "pending" if live or launched_pid is None else "killed"
    elif (
        live
        and launched_at is not None
        and launched_at > last_time
        and (start is None or start.pid != launched_pid)
    ):
        status = "pending"  # relaunched
    elif state.finish is not None:
        return state.finish.status
    else:
        status = "running" if live else "killed"
    return "suspended" if status != "killed" and owner and pid_suspended(owner) else status


def planned_steps(config: dict[str, Any]) -> int | None:
    """The steps a run's config asks for (its "steps"), None when it names no whole number."""
    steps = config.get("steps")
    return steps if isinstance(steps, int) and not isinstance(steps, bool) else None


def summarize(run_dir: str | os.PathLike[str], queue: slurm.Queue | None = None) -> RunSummary:
    """Summarize a run from its config.json, meta.json, events.jsonl and worker.pid (or Slurm job).

    `queue`: Slurm's view of the jobs of many runs summarized together (one squeue call for all).
    """
    run_dir = Path(run_dir)
    state = read_state(run_dir / EVENTS)
    return build_summary(run_dir, read_config(run_dir), read_meta(run_dir), state, queue)


def build_summary(
    run_dir: Path,
    config: dict[str, Any],
    meta: dict[str, Any],
    state: RunState,
    queue: slurm.Queue | None = None,
) -> RunSummary:
    """A run's summary from its folded events (the dashboard folds them incrementally, `summarize`
    reads them whole) plus its config, meta and pidfile, or for a Slurm run its job's queue state
    (from `queue`, else one squeue call)."""
    launched_pid = read_pid(run_dir)
    try:
        launched_at = (run_dir / PIDFILE).stat().st_mtime if launched_pid is not None else None
    except OSError:
        launched_at = None
    first, last = state.first_start, state.last_start
    record = slurm.read_job(run_dir)
    job_id = str(record["job_id"]) if record and record.get("job_id") else None
    job = (queue or slurm.Queue([job_id])).job_of(record) if job_id else None
    owner = run_owner(run_dir) if record is None else None
    if record is None:
        status = derive_status(state, launched_pid, launched_at, owner)
    else:
        status = slurm.run_status(state, job_id, job)
    finish = state.finish if status in TERMINAL_STATUSES else None
    pid = owner or (launched_pid if status == "pending" else (last.pid if last else None) or launched_pid)
    stage = str(config.get("stage") or (first.stage if first else ""))
    task = config.get("target" if stage == "stage2" else "task") or (first.label if first else "")
    return RunSummary(
        run_id=run_dir.name,
        stage=stage,
        method=str(
            config.get("method") or (first.method if first else "") or ("pt" if stage == "stage1" else "")
        ),
        task=str(task),
        model=str(config.get("model") or ""),
        status=status,
        best_metric=state.best_metric,
        metric_name=config.get("primary_metric"),
        step=state.step,
        total_steps=planned_steps(config),
        started=state.started,
        ended=finish.time if finish else None,
        duration=state.duration,
        pid=pid,
        error=finish.error if finish else exit_reason(run_dir, pid) if status == "killed" else None,
        tags=meta.get("tags", []),
        note=meta.get("note", ""),
        run_dir=str(run_dir),
        executor="slurm" if record else "local",
        job_id=job_id,
        host=last.host if last else None,
        slurm_state=job.describe() if job else None,
    )
