"""The history index: `runs/history.json`, a TinyDB database with one summary per run.

The contract: docs/architecture.md, 'History index'.

It is derived from the run folders and rebuilt from them whenever it is missing or corrupt. Every
change takes `history.json.lock` (`runowner.locked`) and replaces the file atomically, so the TUI and
headless commands can update it side by side. In a runs directory that cannot hold the lock
(read-only), `all()` still reads: it summarizes the run folders and writes nothing. Imports only the
standard library and tinydb: the TUI imports it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

from tinydb import TinyDB, where
from tinydb.storages import MemoryStorage, Storage

from dtvg_engine.errors import UserError, no_space
from dtvg_engine.runs import slurm
from dtvg_engine.runs.atomic import write_json_atomic
from dtvg_engine.runs.events import TERMINAL_STATUSES
from dtvg_engine.runs.runfolder import list_run_dirs
from dtvg_engine.runs.runowner import locked
from dtvg_engine.runs.runstatus import RunSummary, summarize
from dtvg_engine.runs.safefiles import parse_json, read_bytes

HISTORY = "history.json"
TABLE = "runs"
"""The TinyDB table holding one `RunSummary.to_dict()` per run."""

SETTLED_STATUSES = (*TERMINAL_STATUSES, "killed")
"""Statuses that change only when a worker runs again, and that worker updates the index itself."""
SUMMARY_KEYS = frozenset(field.name for field in fields(RunSummary))
"""The keys of a document; one indexed without some (by an older version) is summarized again."""


class AtomicJSONStorage(Storage):
    """TinyDB storage that reads a JSON file leniently and replaces it atomically on every write.

    A missing, empty or corrupt file reads as None (an empty database); `History` then rebuilds it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        """The JSON file."""

    def read(self) -> dict[str, dict[str, Any]] | None:
        try:
            data = parse_json(read_bytes(self.path))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        write_json_atomic(self.path, data)


class History:
    """The index of the runs in one runs directory."""

    def __init__(self, runs_dir: str | os.PathLike[str]) -> None:
        self.runs_dir = Path(runs_dir)
        """The runs directory indexed."""
        self.path = self.runs_dir / HISTORY
        """The TinyDB file, `runs/history.json`."""
        self.skipped: dict[str, str] = {}
        """Run folders the last summary of all runs passed over, and why (config.json unreadable)."""

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the lock every read-modify-write holds (the runs directory is created if needed).

        `UserError` when history.json is a folder, or the lock file cannot be made (read-only directory).
        """
        if self.path.is_dir():
            raise UserError(
                f"{self.path} is a folder, not the history index; move it away "
                "(the index is rebuilt from the run folders)"
            )
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the runs directory {self.runs_dir}: {e.strerror}") from e
        doing = f"update the history index {self.path} (is {self.runs_dir} read-only?)"
        with locked(self.path.with_name(f"{HISTORY}.lock"), doing):
            yield

    def _db(self) -> TinyDB:
        """A fresh handle: TinyDB caches ids and queries, which other processes may have made stale."""
        return TinyDB(self.path, storage=AtomicJSONStorage)

    def _read(self) -> list[dict[str, Any]] | None:
        """The indexed documents, or None when the file is missing, corrupt or not a runs index."""
        data = AtomicJSONStorage(self.path).read()
        table = data.get(TABLE, {}) if data is not None else None
        if not isinstance(table, dict):
            return None
        docs = list(table.values())
        if not all(isinstance(doc, dict) and isinstance(doc.get("run_id"), str) for doc in docs):
            return None
        return docs

    def _replace_all(self, docs: list[dict[str, Any]]) -> None:
        """Replace every document in one atomic write (built in memory, in TinyDB's own format)."""
        memory = TinyDB(storage=MemoryStorage)
        memory.table(TABLE).insert_multiple(docs)
        AtomicJSONStorage(self.path).write(memory.storage.read() or {})

    def _summarize(self, run_dir: Path, queue: slurm.Queue | None = None) -> dict[str, Any] | None:
        """The run's document, or None for a folder that cannot be summarized (its config.json cannot
        be read, a file of it is a link): recorded in `skipped`, so one bad folder hides no other."""
        try:
            return summarize(run_dir, queue).to_dict()
        except UserError as e:
            self.skipped[run_dir.name] = str(e)
            return None

    def _rebuild_locked(self) -> list[dict[str, Any]]:
        docs = self._current(None)
        self._replace_all(docs)
        return docs

    def rebuild(self) -> list[dict[str, Any]]:
        """Re-summarize every run folder and replace all documents; return them sorted by id."""
        with self._locked():
            return self._rebuild_locked()

    def upsert(self, run_dir: str | os.PathLike[str]) -> dict[str, Any]:
        """Re-summarize one run and replace its document (the worker calls it at start and end)."""
        with self._locked():
            if self._read() is None:
                self._rebuild_locked()  # never index one run alone into a lost index
            doc = summarize(run_dir).to_dict()
            self._db().table(TABLE).upsert(doc, where("run_id") == doc["run_id"])
        return doc

    def all(self) -> list[dict[str, Any]]:
        """Every run's document sorted by id, first brought up to date with the run folders.

        A missing or corrupt index is rebuilt. Otherwise runs added or deleted since are added or
        dropped, and runs not settled are re-summarized: a worker that was killed cannot say so itself.
        A read-only runs directory gets the same documents, and its index is left as it is.
        """
        if self.runs_dir.is_dir() and not os.access(self.runs_dir, os.W_OK | os.X_OK):
            return self._current(self._read())
        with self._locked():
            indexed = self._read()
            docs = self._current(indexed)
            if indexed is None or docs != sorted(indexed, key=lambda doc: doc["run_id"]):
                try:
                    self._replace_all(docs)
                except OSError as e:  # a full disk: the index, derived, is brought up to date next time
                    if not no_space(e):
                        raise
            return docs

    def _current(self, indexed: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        """The documents of the run folders now, reusing the indexed ones of settled runs."""
        by_id = {doc["run_id"]: doc for doc in indexed or []}
        self.skipped = {}
        run_dirs = list_run_dirs(self.runs_dir)
        stale = {
            run_dir  # unsettled, settled while its Slurm job was still in the queue, or indexed by a
            for run_dir in run_dirs  # version without some fields
            if (doc := by_id.get(run_dir.name)) is None
            or doc.get("status") not in SETTLED_STATUSES
            or doc.get("slurm_state") is not None
            or not SUMMARY_KEYS <= doc.keys()
        }
        queue = slurm.Queue.of_runs(stale)  # one squeue call for every Slurm run among them
        docs = []
        for run_dir in run_dirs:
            doc = self._summarize(run_dir, queue) if run_dir in stale else by_id[run_dir.name]
            if doc:
                docs.append(doc)
        return docs

    def get(self, run_id: str) -> dict[str, Any] | None:
        """The up-to-date document of one run, or None when there is no such run."""
        return next((doc for doc in self.all() if doc["run_id"] == run_id), None)

    def remove(self, run_id: str) -> None:
        """Drop a run's document; call it after deleting its folder (`all()` re-adds existing runs)."""
        with self._locked():
            if self._read() is not None:
                self._db().table(TABLE).remove(where("run_id") == run_id)
