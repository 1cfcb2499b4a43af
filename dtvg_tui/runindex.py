"""The Runs table's data: the history index first, then run folders followed incrementally.

`RunIndex.cached()` reads `runs/history.json` as it is (no lock, no parsing of event files) so the
first screen shows at once; `RunIndex.scan()` (run in a background thread) then brings every run up to
date. A run is re-read only when its files changed, and only from the byte offset where the last read
stopped, so a stage-2 run writing 50 events per second costs its new lines, not its whole stream.
Runs whose summary changed in a way the index records (status, best metric, tags, note, …) are written
back through `History.upsert`, under its file lock. The jobs of the Slurm runs a scan looks at are
asked about in one `squeue` call per scan (`slurm.Queue`), never one per run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dtvg_engine.errors import UserError
from dtvg_engine.runs import launcher, slurm
from dtvg_engine.runs.events import EventReader, RunState
from dtvg_engine.runs.history import History
from dtvg_engine.runs.runfolder import EVENTS, META, PIDFILE, list_run_dirs, read_config
from dtvg_engine.runs.runmeta import read_meta
from dtvg_engine.runs.runstatus import LIVE_STATUSES, RunSummary, build_summary

_SUMMARY_FIELDS = {f.name for f in fields(RunSummary)}

INDEXED_FIELDS = (
    "status", "best_metric", "started", "ended", "tags", "note", "error", "stage", "task",
    "executor", "job_id", "host",
)  # fmt: skip
"""The summary fields whose change is written back to the history index (not step or duration)."""


def summary_from_dict(doc: dict[str, Any]) -> RunSummary | None:
    """A `RunSummary` from a history document (unknown keys ignored), None when it is not one."""
    try:
        return RunSummary(**{k: v for k, v in doc.items() if k in _SUMMARY_FIELDS})
    except TypeError:
        return None


def _mtime(path: Path) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


@dataclass
class _Tracked:
    """What one run's files said so far, its events folded incrementally."""

    run_dir: Path
    config: dict[str, Any]
    reader: EventReader
    state: RunState = field(default_factory=RunState)
    size: int = -1
    mtime: int | None = None
    meta_mtime: int | None = -1
    pid_mtime: int | None = -1
    job_mtime: int | None = -1
    meta: dict[str, Any] = field(default_factory=dict)
    summary: RunSummary | None = None

    def read_new_events(self) -> bool:
        """Fold the events appended since the last read; True when the file changed at all."""
        try:
            st = os.stat(self.reader.path)
        except OSError:
            changed = self.size != 0
            self.size, self.mtime = 0, None
            return changed
        if st.st_size == self.size and st.st_mtime_ns == self.mtime:
            return False
        self.size, self.mtime = st.st_size, st.st_mtime_ns
        for lines in self.reader.chunks():
            if self.reader.restarted:  # truncated or replaced: fold it again from the start
                self.state = RunState()
            self.state.feed_lines(lines)
        return True

    def summarize(self, queue: slurm.Queue | None = None) -> RunSummary:
        """The same summary as `runstatus.summarize`, from the folded state."""
        return build_summary(self.run_dir, self.config, self.meta, self.state, queue)


class RunIndex:
    """Summaries of every run of a runs directory, kept fresh by `scan()`."""

    def __init__(self, runs_dir: str | os.PathLike[str]) -> None:
        self.runs_dir = Path(runs_dir)
        """The runs directory."""
        self.history = History(self.runs_dir)
        """The TinyDB index, `runs/history.json`."""
        self._tracked: dict[str, _Tracked] = {}
        self._indexed: dict[str, dict[str, Any]] = {}

    def cached(self) -> list[RunSummary]:
        """The runs as the history index last recorded them (fast: one JSON read, no lock).

        Empty when the index is missing or corrupt; `scan()` rebuilds it.
        """
        try:
            docs = self.history._read() or []
        except Exception:  # noqa: BLE001 - a broken index only costs a rebuild
            docs = []
        summaries = []
        self._indexed = {}
        for doc in docs:
            summary = summary_from_dict(doc)
            if summary is not None:
                summaries.append(summary)
                self._indexed[summary.run_id] = doc  # as indexed: what `_write_back` compares against
        return sorted(summaries, key=lambda s: s.run_id)

    def sync_history(self) -> list[RunSummary]:
        """Bring the history index up to date with the run folders (rebuilt when lost) and return it."""
        docs = self.history.all()
        self._indexed = {doc["run_id"]: doc for doc in docs}
        return [s for doc in docs if (s := summary_from_dict(doc)) is not None]

    def scan(self) -> tuple[list[RunSummary], list[str]]:
        """Re-read what changed; return (summaries that changed, ids of runs that disappeared).

        The first scan returns every run. Changes the index records are written to history.json.
        """
        launcher.reap()  # the workers the dashboard launched: a dead one's exit status, before its status
        seen: set[str] = set()
        changed: list[RunSummary] = []
        dirty_runs: list[_Tracked] = []
        for run_dir in list_run_dirs(self.runs_dir):
            run_id = run_dir.name
            seen.add(run_id)
            tracked = self._tracked.get(run_id)
            if tracked is None:
                try:
                    config = read_config(run_dir)
                except UserError:
                    continue
                tracked = self._tracked[run_id] = _Tracked(run_dir, config, EventReader(run_dir / EVENTS))
            try:
                dirty = tracked.read_new_events()
            except UserError:  # events.jsonl is a link, a FIFO, a device: this run alone is not shown
                del self._tracked[run_id]
                continue
            meta_mtime = _mtime(run_dir / META)
            if meta_mtime != tracked.meta_mtime:
                tracked.meta_mtime = meta_mtime
                tracked.meta = read_meta(run_dir)
                dirty = True
            pid_mtime = _mtime(run_dir / PIDFILE)
            if pid_mtime != tracked.pid_mtime:
                tracked.pid_mtime = pid_mtime
                dirty = True
            job_mtime = _mtime(run_dir / slurm.JOB_FILE)
            if job_mtime != tracked.job_mtime:  # submitted to Slurm (again)
                tracked.job_mtime = job_mtime
                dirty = True
            if tracked.summary is not None and tracked.summary.status in LIVE_STATUSES:
                dirty = True  # a worker that died says nothing: its pid (or Slurm job) has to be checked
            if dirty:
                dirty_runs.append(tracked)
        queue = slurm.Queue.of_runs(tracked.run_dir for tracked in dirty_runs)
        for tracked in dirty_runs:
            summary = tracked.summarize(queue)
            if summary != tracked.summary:
                tracked.summary = summary
                changed.append(summary)
                self._write_back(summary)
        gone = [run_id for run_id in self._tracked if run_id not in seen]
        for run_id in gone:
            del self._tracked[run_id]
            if run_id in self._indexed:
                self._indexed.pop(run_id)
                self.history.remove(run_id)
        return changed, gone

    def _write_back(self, summary: RunSummary) -> None:
        doc = self._indexed.get(summary.run_id)
        new = summary.to_dict()
        if doc is not None and all(doc.get(k) == new.get(k) for k in INDEXED_FIELDS):
            return
        try:
            self._indexed[summary.run_id] = self.history.upsert(summary.run_dir)
        except UserError:
            pass

    def summary(self, run_id: str) -> RunSummary | None:
        tracked = self._tracked.get(run_id)
        return tracked.summary if tracked else None

    def all(self) -> list[RunSummary]:
        """Every run scanned so far."""
        return [t.summary for t in self._tracked.values() if t.summary is not None]
