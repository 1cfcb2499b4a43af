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

from dtvg_engine import launcher, slurm
from dtvg_engine.errors import UserError
from dtvg_engine.events import Event, EventReader, RunStarted, RunState, parse_line
from dtvg_engine.history import History
from dtvg_engine.runfolder import (
    EVENTS,
    LIVE_STATUSES,
    META,
    PIDFILE,
    RunSummary,
    build_summary,
    list_run_dirs,
    read_config,
    read_meta,
)

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


_CHUNK = 8 << 20
_PREFIX = b'{"v":1,"type":"'
"""How the writer starts every line (compact JSON, `v` and `type` first)."""
_BULK_TYPES = frozenset((b"step", b"group", b"log", b"checkpoint", b"artifact"))


def _bulk_types(lines: list[bytes]) -> list[bytes | None]:
    """The type of each line a summary may leave unparsed, told from its bytes alone; None for any other.

    Only a line that starts as the writer writes a step, group, log, checkpoint or artifact event
    qualifies, and only when no second "type" key (written plainly or with \\u escapes) could make
    it another type when parsed: lifecycle and eval lines, and anything unusual, are always parsed.
    Whether any line could hold a second key is first asked of all lines at once, in C: as the writer
    writes them, none can, and each line then costs a slice.
    """
    start = len(_PREFIX)
    joined = b"\n".join(lines)
    plain = (
        b"\\u" not in joined and joined.count(b'"type"') == len(lines) == joined.count(b"\n" + _PREFIX) + 1
    )
    if plain and joined.startswith(_PREFIX):  # every line written by the writer, one "type" key each
        return [
            kind if (kind := line[start : line.find(b'"', start)]) in _BULK_TYPES else None for line in lines
        ]
    kinds: list[bytes | None] = []
    for line in lines:
        end = line.find(b'"', start)
        kind = line[start:end]
        bulk = line.startswith(_PREFIX) and kind in _BULK_TYPES
        kinds.append(kind if bulk and line.find(b'"type"', end) < 0 and b"\\u" not in line else None)
    return kinds


def summary_events(lines: list[bytes]) -> list[Event]:
    """The events of `lines` that `RunState` needs to fold the same state as from all of them.

    Lifecycle and eval lines (and any line that does not look like a plain bulk line) are parsed; of
    the thousands of step and group lines in between only the last valid step, the last valid event
    before every `run_started` (where a dead segment ended) and the last valid event (the latest time)
    are. Validity is the shared schema's (`parse_line`): a damaged line is passed over for the one before.
    Indexing a 100,000-line stage-2 run this way takes a fraction of reading it.
    """
    kinds = _bulk_types(lines)
    parsed: dict[int, Event | None] = {
        i: parse_line(line) for i, line in enumerate(lines) if kinds[i] is None
    }

    def keep_latest_valid(before: int) -> None:
        for i in range(before - 1, -1, -1):
            if i not in parsed:
                parsed[i] = parse_line(lines[i])
            if parsed[i] is not None:
                return

    for i in [i for i, event in parsed.items() if isinstance(event, RunStarted)] + [len(lines)]:
        keep_latest_valid(i)
    for i in range(len(lines) - 1, -1, -1):
        if kinds[i] == b"step":
            parsed[i] = event = parse_line(lines[i])
            if event is not None:
                break
    return [event for _, event in sorted(parsed.items()) if event is not None]


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
        while True:
            lines = self.reader.read_lines(_CHUNK)
            if self.reader.restarted:  # truncated or replaced: fold it again from the start
                self.state = RunState()
            self.state.feed(summary_events(lines))
            if self.reader.at_end:
                return True

    def summarize(self, queue: slurm.Queue | None = None) -> RunSummary:
        """The same summary as `runfolder.summarize`, from the folded state."""
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
