"""The Runs table as plain data: its columns, how a run fills them, sorting and filtering (no Textual).

Filter syntax: words match anywhere (id, stage, method, task, model, status, tags, note), all of them
must match; `status:failed`, `tag:best`, `stage:stage2`, `method:dtvg`, `task:rte`, `executor:slurm`
match one field. A Slurm run waiting in the queue shows the queue's state ("queued (Priority)").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dtvg_engine.runs.runstatus import STATUSES, RunSummary
from dtvg_tui.fmt import fmt_duration, fmt_metric, fmt_progress, fmt_time


@dataclass(frozen=True)
class Column:
    """One column of the Runs table."""

    key: str
    """Column key (also the sort name)."""
    label: str
    """Header text."""
    cell: Callable[[RunSummary], str]
    """The run's text in this column."""
    sort: Callable[[RunSummary], Any]
    """Sort key; None (no value yet, e.g. a run that failed before its first eval) sorts last either way."""


COLUMNS: tuple[Column, ...] = (
    Column("run_id", "Run", lambda s: s.run_id, lambda s: s.run_id),
    Column("stage", "Stage", lambda s: s.stage, lambda s: s.stage),
    Column("method", "Method", lambda s: s.method, lambda s: s.method),
    Column("task", "Task/target", lambda s: s.task, lambda s: s.task),
    Column("model", "Model", lambda s: s.model, lambda s: s.model),
    Column(
        "status",
        "Status",
        lambda s: status_text(s),
        lambda s: STATUSES.index(s.status) if s.status in STATUSES else 9,
    ),
    Column("step", "Step", lambda s: fmt_progress(s.step, s.total_steps), lambda s: s.step),
    Column("best_metric", "Best", lambda s: fmt_metric(s.best_metric), lambda s: s.best_metric),
    Column("started", "Started", lambda s: fmt_time(s.started), lambda s: s.started),
    Column("duration", "Duration", lambda s: fmt_duration(s.duration), lambda s: s.duration),
    Column("tags", "Tags", lambda s: ",".join(s.tags), lambda s: ",".join(s.tags)),
    # Last: where a run executes matters less at a glance than its tags, and a narrow terminal cuts the right.
    Column("executor", "Executor", lambda s: executor_text(s), lambda s: (s.executor, s.job_id or "")),
)
"""The table's columns, left to right."""

COLUMN_KEYS = tuple(c.key for c in COLUMNS)

ROW_LIMIT = 1000
"""The most rows the table holds: each row costs the table a measure of every cell, so 5,000 runs would
take seconds to a first screen. Sorting and filtering still see every run; the title says when rows
beyond the first `ROW_LIMIT` are left out."""
_BY_KEY = {c.key: c for c in COLUMNS}

_FIELDS = {
    "status": "status",
    "stage": "stage",
    "method": "method",
    "task": "task",
    "model": "model",
    "executor": "executor",
}


def status_text(summary: RunSummary) -> str:
    """The run's status; for a Slurm run waiting in the queue, the queue's word: "queued (Priority)"."""
    queued = summary.status == "pending" and (summary.slurm_state or "").startswith("queued")
    return summary.slurm_state if queued else summary.status


def executor_text(summary: RunSummary) -> str:
    """Where the run runs: "local", or "slurm" and its job id."""
    return f"slurm {summary.job_id}" if summary.executor == "slurm" and summary.job_id else summary.executor


def row_cells(summary: RunSummary) -> tuple[str, ...]:
    """The run's text in every column."""
    return tuple(c.cell(summary) for c in COLUMNS)


def matches(summary: RunSummary, query: str, status: str | None = None) -> bool:
    """Whether the run passes the filter text `query` and the status filter (None: any status)."""
    if status and summary.status != status:
        return False
    for word in query.lower().split():
        name, sep, value = word.partition(":")
        if sep and name in _FIELDS:
            if value not in str(getattr(summary, _FIELDS[name])).lower():
                return False
        elif sep and name == "tag":
            if not any(value in tag.lower() for tag in summary.tags):
                return False
        else:
            haystack = " ".join(
                (
                    summary.run_id,
                    summary.stage,
                    summary.method,
                    summary.task,
                    summary.model,
                    summary.status,
                    *summary.tags,
                    summary.note,
                )
            ).lower()
            if word not in haystack:
                return False
    return True


def view(
    summaries: Iterable[RunSummary],
    query: str = "",
    status: str | None = None,
    sort: str = "run_id",
    reverse: bool = True,
) -> list[RunSummary]:
    """The runs shown: filtered, then sorted by column `sort` (ties by run id; runs without a value last)."""
    column = _BY_KEY[sort]
    shown = [s for s in summaries if matches(s, query, status)]
    shown.sort(key=lambda s: s.run_id, reverse=reverse)
    valued = [s for s in shown if column.sort(s) is not None]
    valued.sort(key=column.sort, reverse=reverse)
    return valued + [s for s in shown if column.sort(s) is None]
