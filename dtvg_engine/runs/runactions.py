"""What may be done to a run (stop, resume, remove) in which status: the one policy for the command
line and the dashboard.

Standard library only, because the terminal UI imports it and must start in well under a second.
"""

from __future__ import annotations

import os
from pathlib import Path

from dtvg_engine.errors import UserError
from dtvg_engine.runs.runowner import run_owner
from dtvg_engine.runs.runstatus import UNFINISHED_STATUSES, RunSummary, summarize

ACTIONS = ("stop", "resume", "rm")
"""What a user may ask of a run; `refusal` says when. Kill is a stop."""


def refusal(action: str, run_id: str, status: str, owner: int | None) -> str | None:
    """Why `action` cannot be done to a run with this status and worker (`run_owner`), or None if it can.

    The one rule for the CLI and the dashboard: a run with a worker can only be stopped; one without can
    be removed, and resumed unless it completed.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    if action == "stop":
        return None if owner is not None else f"run {run_id} is not running ({status})"
    if owner is not None:
        return (
            f"run {run_id} is {status} (worker pid {owner or 'starting'}); "
            f"stop it first with `dtvg runs stop {run_id}`"
        )
    if action == "resume" and status not in UNFINISHED_STATUSES:
        return f"run {run_id} is {status}; only unfinished runs (stopped, killed, failed, queued) resume"
    return None


def action_refusal(
    run_dir: str | os.PathLike[str], action: str, summary: RunSummary | None = None
) -> str | None:
    """Why `action` cannot be done to the run now, or None (see `refusal`); `summary`: its summary, if
    the caller has a fresh one.

    A run whose Slurm job is in the queue is owned by that job (its worker may run on another host).
    """
    run_dir = Path(run_dir)
    summary = summary or summarize(run_dir)
    if summary.slurm_state is not None:
        if action == "stop":
            return None
        return (
            f"run {run_dir.name} is Slurm job {summary.job_id} ({summary.slurm_state}); "
            f"stop it first with `dtvg runs stop {run_dir.name}`"
        )
    return refusal(action, run_dir.name, summary.status, run_owner(run_dir))


def check_action(run_dir: str | os.PathLike[str], action: str) -> None:
    """`UserError` when `action` cannot be done to the run now (see `action_refusal`)."""
    reason = action_refusal(run_dir, action)
    if reason:
        raise UserError(reason)
