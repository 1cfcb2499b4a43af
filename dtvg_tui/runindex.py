"""The Runs table's data: the history index first, then run folders followed incrementally.

`RunIndex.cached()` reads `runs/history.json` as it is (no lock, no parsing of event files) so the
first screen shows at once; `RunIndex.scan()` (run in a background thread) then brings every run up to
date. A run is re-read only when its files changed, and only from the byte offset where the last read
stopped, so a stage-2 run writing 50 events per second costs its new lines, not its whole stream.
Runs whose summary changed in a way the index records (status, best metric, tags, note, …) are written
back through `History.upsert`, under its file lock.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dtvg_engine.errors import UserError
from dtvg_engine.events import parse_lines
from dtvg_engine.history import History
from dtvg_engine.runfolder import (
    EVENTS,
    META,
    PIDFILE,
    RunSummary,
    build_summary,
    list_run_dirs,
    read_config,
    read_meta,
)

_SUMMARY_FIELDS = {f.name for f in fields(RunSummary)}

INDEXED_FIELDS = ("status", "best_metric", "started", "ended", "tags", "note", "error", "stage", "task")
"""The summary fields whose change is written back to the history index (not step or duration)."""


def summary_from_dict(doc: dict[str, Any]) -> RunSummary | None:
    """A `RunSummary` from a history document (unknown keys ignored), None when it is not one."""
    try:
        return RunSummary(**{k: v for k, v in doc.items() if k in _SUMMARY_FIELDS})
    except TypeError:
        return None


_CHUNK = 8 << 20
_SUMMARY_TYPES = (b"run_started", b"run_finished", b"eval")


def _line_type(line: bytes) -> bytes | None:
    """The event type of a JSON line without parsing it (None when it cannot be told)."""
    i = line.find(b'"type"')
    if i < 0:
        return None
    j = line.find(b'"', i + 6)
    k = line.find(b'"', j + 1)
    return line[j + 1 : k] if j >= 0 and k > j else None


def summary_events(chunk: bytes) -> tuple[list[dict[str, Any]], int]:
    """The events of `chunk`'s complete lines that a summary needs, and the bytes consumed.

    Lifecycle and eval lines are parsed, plus the last step line, the line before every `run_started`
    (where a dead segment ended) and the last line (the latest time); the thousands of step and group
    lines in between are skipped unparsed, so indexing a 100,000-line stage-2 run takes a fraction of
    reading it.
    """
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], 0
    lines = chunk[: end + 1].splitlines()
    keep: set[int] = {len(lines) - 1}
    last_step = None
    for i, line in enumerate(lines):
        kind = _line_type(line)
        if kind == b"step":
            last_step = i
        elif kind is None or kind in _SUMMARY_TYPES:
            keep.add(i)
            if kind == b"run_started" and i:
                keep.add(i - 1)
    if last_step is not None:
        keep.add(last_step)
    events, _ = parse_lines(b"\n".join(lines[i] for i in sorted(keep)) + b"\n")
    return events, end + 1


def _mtime(path: Path) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


@dataclass
class _Tracked:
    """What one run's files said so far, folded incrementally."""

    run_dir: Path
    config: dict[str, Any]
    offset: int = 0
    size: int = -1
    mtime: int | None = None
    meta_mtime: int | None = -1
    pid_mtime: int | None = -1
    lifecycle: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0
    best: float | None = None
    last_time: float | None = None
    closed: float | None = None
    open_start: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    summary: RunSummary | None = None

    def read_new_events(self) -> bool:
        """Fold the events appended since the last read; True when the file changed at all."""
        path = self.run_dir / EVENTS
        try:
            st = os.stat(path)
        except OSError:
            changed = self.size != 0
            self.size, self.mtime = 0, None
            return changed
        if st.st_size == self.size and st.st_mtime_ns == self.mtime:
            return False
        if st.st_size < self.offset:  # rewritten: start over
            self.offset, self.lifecycle, self.step, self.best, self.last_time = 0, [], 0, None, None
            self.closed = self.open_start = None
        self.size, self.mtime = st.st_size, st.st_mtime_ns
        with open(path, "rb") as f:
            f.seek(self.offset)
            while True:
                chunk = f.read(_CHUNK)
                events, consumed = summary_events(chunk)
                self.offset += consumed
                self._fold(events)
                if len(chunk) < _CHUNK or not consumed:
                    break
                f.seek(self.offset)
        return True

    def _fold(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            kind = event["type"]
            if kind in ("run_started", "run_finished"):
                self.lifecycle.append(event)
                if self.open_start is not None:  # a finish, or a start after a segment that died
                    end = event["time"] if kind == "run_finished" else self.last_time
                    self.closed = (
                        (self.closed or 0.0) + (end if end is not None else self.open_start) - self.open_start
                    )
                self.open_start = event["time"] if kind == "run_started" else None
            elif kind == "step":
                self.step = int(event.get("step", self.step))
            elif kind == "eval" and event.get("best"):
                primary = event.get("primary")
                self.best = float(primary) if isinstance(primary, (int, float)) else None
            when = event.get("time")
            if isinstance(when, (int, float)):
                self.last_time = when

    def duration(self) -> float | None:
        """Seconds spent running over all segments, an open one up to its last event."""
        if self.open_start is None:
            return self.closed
        return (self.closed or 0.0) + (self.last_time or self.open_start) - self.open_start

    def summarize(self) -> RunSummary:
        """The same summary as `runfolder.summarize`, from the folded state."""
        return build_summary(
            self.run_dir,
            self.config,
            self.meta,
            self.lifecycle,
            step=self.step,
            best=self.best,
            duration=self.duration(),
        )


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
        summaries = [s for doc in docs if (s := summary_from_dict(doc)) is not None]
        self._indexed = {s.run_id: s.to_dict() for s in summaries}
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
        seen: set[str] = set()
        changed: list[RunSummary] = []
        for run_dir in list_run_dirs(self.runs_dir):
            run_id = run_dir.name
            seen.add(run_id)
            tracked = self._tracked.get(run_id)
            if tracked is None:
                try:
                    config = read_config(run_dir)
                except UserError:
                    continue
                tracked = self._tracked[run_id] = _Tracked(run_dir, config)
            dirty = tracked.read_new_events()
            meta_mtime = _mtime(run_dir / META)
            if meta_mtime != tracked.meta_mtime:
                tracked.meta_mtime = meta_mtime
                tracked.meta = read_meta(run_dir)
                dirty = True
            pid_mtime = _mtime(run_dir / PIDFILE)
            if pid_mtime != tracked.pid_mtime:
                tracked.pid_mtime = pid_mtime
                dirty = True
            if tracked.summary is not None and tracked.summary.status in ("running", "pending"):
                dirty = True  # a worker that died says nothing: its pid has to be checked
            if not dirty:
                continue
            summary = tracked.summarize()
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
