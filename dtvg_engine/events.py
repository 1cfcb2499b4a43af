"""Event stream v1 (DESIGN §4): the append-only `events.jsonl` of a run.

Standard library only: the worker writes it, the CLI and the TUI read it. Writers flush every event
and never rewrite a line; readers skip a torn last line and event types they do not know.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

EVENT_TYPES = (
    "run_started",
    "step",
    "group",
    "eval",
    "checkpoint",
    "artifact",
    "log",
    "run_finished",
)
"""Every event type of v1, in the order a run usually emits them."""

TERMINAL_STATUSES = ("completed", "failed", "stopped")
"""The `status` values of `run_finished`."""


class EventWriter:
    """Appends events to a run's `events.jsonl`, one flushed line each."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if _ends_torn(self.path):  # a killed writer's half line: end it, so our first event stands alone
            self._file.write("\n")

    def emit(self, type: str, **fields: Any) -> dict[str, Any]:
        """Write one event and return it; `type` must be one of `EVENT_TYPES`."""
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}")
        event = {"v": SCHEMA_VERSION, "type": type, "time": time.time(), **fields}
        self._file.write(json.dumps(event, separators=(",", ":")) + "\n")
        self._file.flush()
        return event

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ends_torn(path: Path) -> bool:
    """True when the file's last line has no newline (a writer died mid-line)."""
    with open(path, "rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def parse_lines(chunk: bytes) -> tuple[list[dict[str, Any]], int]:
    """Parse the complete lines of `chunk`; return the events and how many bytes were consumed.

    A trailing piece without a newline is not consumed (it may be a line still being written).
    Lines that are not valid JSON objects of schema v1 with a known type are skipped.
    """
    events: list[dict[str, Any]] = []
    end = chunk.rfind(b"\n")
    if end < 0:
        return events, 0
    for raw in chunk[: end + 1].splitlines():
        if not raw.strip():
            continue
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("v") == SCHEMA_VERSION and event.get("type") in EVENT_TYPES:
            events.append(event)
    return events, end + 1


def read_events(path: str | os.PathLike[str], offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Read the events written after byte `offset`; return them and the offset to resume from.

    Call it again with the returned offset to follow a live run incrementally.
    A missing file reads as no events.
    """
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:
        return [], offset
    events, consumed = parse_lines(chunk)
    return events, offset + consumed
