"""Event stream v1: the schema of `events.jsonl`, its writer, its one reader and its one fold.

The contract: docs/architecture.md, 'Event stream'.

Standard library only: the worker writes the stream; the CLI, the history index, the report and the TUI
read it, all through what is here, so that they agree on what a run did:

- the schema: one small dataclass per event type (`RunStarted`, `Step`, …). `parse_line` turns a line
  into one, or into None for anything it cannot read: a torn or binary line, JSON that is no object,
  another schema version, an unknown type, a missing field or a field of the wrong type. Such lines are
  skipped and counted, never fatal: one bad line must not hide a run.
- `EventReader`, the one resumable reader: it follows a file from a byte offset, leaves a torn last line
  for the next read (it may still be being written) and starts again from byte 0 when the file was
  truncated or replaced. Whole files are read a chunk at a time (`READ_CHUNK_BYTES`), so reading one
  of any size holds about one chunk, never the file.
- `RunState`, the one fold of a stream into the run's lifecycle: status as the events tell it, steps done,
  best metric, last evaluations, duration over resumed segments, error. `RunState.feed_lines` folds raw
  lines parsing only those the fold needs (`summary_events`), which is how summaries read a long run.

The same classes are what the worker writes: it makes an event (`Step(step=..., ...)`) and
`EventWriter.emit` stamps its time and writes it as one line (`event_to_dict`). Writers flush every event
and never rewrite a line; `emit` checks each line against the schema, so the worker cannot write a line its
readers would skip.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import MISSING, dataclass, field, fields, replace
from functools import cache
from pathlib import Path
from types import NoneType, UnionType
from typing import (
    Any,
    ClassVar,
    Literal,
    TypedDict,
    Union,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

from dtvg_engine.runs.safefiles import open_file

SCHEMA_VERSION = 1

FinishStatus = Literal["completed", "failed", "stopped"]
TERMINAL_STATUSES: tuple[str, ...] = get_args(FinishStatus)
"""The `status` values of `run_finished`."""


class Ranked(TypedDict):
    """One source of a `group` event's ranking."""

    task: str
    sim: float
    """Similarity to the target (DTVG eq. 2)."""


REQUIRED = {"required": True}
"""Field metadata: every line holds the field, though an event made to be written may leave it out."""
WRITTEN_WHEN_SET = {"written_when_set": True}
"""Field metadata: the writer leaves the field out of a line while it is None."""


@dataclass(slots=True)
class Event:
    """What every event has: its type (a class constant) and the unix time it was written.

    The worker makes an event without its time (`Step(step=1, ...)`) and `EventWriter.emit` stamps it;
    the readers make them from lines, which always hold it. A line holds "v", "type", "time", then the
    fields in their order here.
    """

    TYPE: ClassVar[str] = ""
    time: float = field(default=0.0, kw_only=True, metadata=REQUIRED)


@dataclass(slots=True)
class RunStarted(Event):
    """A worker started the run, or resumed it (one per segment)."""

    TYPE: ClassVar[str] = "run_started"
    run_id: str
    stage: str
    """"stage1" or "stage2"."""
    method: str
    pid: int | None
    """The worker's pid (on `host`)."""
    config: dict[str, Any]
    """The full resolved run config."""
    host: str | None = None
    """Where the worker runs (since turn 2; None in older runs)."""
    executor: str = "local"
    """"local" or "slurm" (since turn 2)."""
    job_id: str | None = None
    """The Slurm job id; None when local."""
    task: str | None = field(default=None, metadata=WRITTEN_WHEN_SET)
    """Stage 1: the task tuned."""
    target: str | None = field(default=None, metadata=WRITTEN_WHEN_SET)
    """Stage 2: the target task."""

    @property
    def label(self) -> str:
        """The stage-2 target, else the stage-1 task."""
        return self.target or self.task or ""


@dataclass(slots=True)
class Step(Event):
    """One training step."""

    TYPE: ClassVar[str] = "step"
    step: int
    loss: float
    lr: dict[str, float]
    """Learning rate of each parameter group, by name."""
    samples_per_s: float


@dataclass(slots=True)
class Group(Event):
    """The source group DTVG chose at one step (stage 2, grouping methods)."""

    TYPE: ClassVar[str] = "group"
    step: int
    ranked: list[Ranked]
    """Every source by descending similarity to the target."""
    selected: list[str]
    """The sources merged at this step."""
    ts: float
    """Target similarity of the group (DTVG eq. 3)."""
    kc: float
    """Knowledge consistency of the group (DTVG eq. 4)."""
    scales: dict[str, float]
    """Mean token scale per task (the target's own included)."""


@dataclass(slots=True)
class Eval(Event):
    """Scores on one split: validation during training, test once at the end."""

    TYPE: ClassVar[str] = "eval"
    step: int | None
    """The step evaluated (the test eval names the best checkpoint's step, None when there was none)."""
    split: str
    metrics: dict[str, float]
    primary: float | None
    """The mean of the task's metrics, by which checkpoints are chosen."""
    best: bool
    """Whether this validation score is the best so far."""


@dataclass(slots=True)
class Checkpoint(Event):
    """A resumable checkpoint was written."""

    TYPE: ClassVar[str] = "checkpoint"
    step: int
    path: str


@dataclass(slots=True)
class Artifact(Event):
    """A result file was written."""

    TYPE: ClassVar[str] = "artifact"
    kind: str
    """"prompt", "tpv" or "adapter"."""
    path: str


@dataclass(slots=True)
class Log(Event):
    """A message for the user."""

    TYPE: ClassVar[str] = "log"
    level: str
    message: str


@dataclass(slots=True)
class RunFinished(Event):
    """A worker ended its segment of the run."""

    TYPE: ClassVar[str] = "run_finished"
    status: FinishStatus
    summary: dict[str, Any]
    """Best metric, steps, seconds, test metrics."""
    error: str | None


EVENT_CLASSES: tuple[type[Event], ...] = (
    RunStarted,
    Step,
    Group,
    Eval,
    Checkpoint,
    Artifact,
    Log,
    RunFinished,
)
EVENT_TYPES = tuple(cls.TYPE for cls in EVENT_CLASSES)
"""Every event type of v1, in the order a run usually emits them."""


# ----- checking a decoded line against the schema -----

Check = Callable[[Any], bool]
_ABSENT = object()


def _json_types(hint: Any) -> frozenset[type] | None:
    """The exact types of decoded JSON values a plain hint allows (a float may be written as an int,
    a bool is no number); None for a hint that is not plain (containers, literals, Any)."""
    if hint is float:
        return frozenset({int, float})
    if hint in (int, str, bool, NoneType):
        return frozenset({hint})
    if get_origin(hint) in (Union, UnionType):
        parts = [_json_types(arg) for arg in get_args(hint)]
        return frozenset().union(*parts) if None not in parts else None  # type: ignore[arg-type]
    return None


def _check_for(hint: Any) -> Check:
    """A predicate for the decoded JSON values of a field annotated `hint`.

    Values are checked by their exact type (JSON decodes to exact types, and the writer checks the
    decoded line), in C where it can: a stage-2 run's 100,000 lines are checked as they are read.
    """
    if hint is Any:
        return lambda value: True
    types = _json_types(hint)
    if types is not None:
        return lambda value: type(value) in types
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return lambda value: type(value) is str and value in args
    if origin in (Union, UnionType):
        options = tuple(_check_for(a) for a in args)
        return lambda value: any(c(value) for c in options)
    if is_typeddict(hint):
        keys = tuple((key, _check_for(t)) for key, t in get_type_hints(hint).items())

        def check_typeddict(value: Any) -> bool:
            if type(value) is not dict:
                return False
            for key, check in keys:
                if not check(value.get(key, _ABSENT)):
                    return False
            return True

        return check_typeddict
    if origin in (list, dict):
        container = origin
        items: Callable[[Any], Any] = iter if origin is list else dict.values  # JSON keys are str
        if args[-1] is Any:
            return lambda value: type(value) is container
        item_types = _json_types(args[-1])
        if item_types is not None:
            return lambda value: type(value) is container and item_types.issuperset(map(type, items(value)))
        item = _check_for(args[-1])
        return lambda value: type(value) is container and all(map(item, items(value)))
    raise TypeError(f"no JSON check for {hint!r}")


def _schema(cls: type[Event]) -> tuple[tuple[str, Check, bool, str], ...]:
    """(name, check, required, type text) of each field of an event class."""
    hints = get_type_hints(cls)
    return tuple(
        (
            f.name,
            _check_for(hints[f.name]),
            f.metadata.get("required", f.default is MISSING and f.default_factory is MISSING),
            str(f.type),
        )
        for f in fields(cls)
    )


_SCHEMAS = {cls.TYPE: (cls, _schema(cls)) for cls in EVENT_CLASSES}


class InvalidEvent(ValueError):
    """A decoded line that is no v1 event; the message says why."""


def event_from_dict(obj: Any) -> Event:
    """The event a decoded JSON line holds; `InvalidEvent` saying what is wrong when it holds none.

    Fields the schema does not know are ignored (a newer writer may add some).
    """
    if not isinstance(obj, dict):
        raise InvalidEvent(f"not a JSON object but {type(obj).__name__}")
    version = obj.get("v")
    if type(version) is not int or version != SCHEMA_VERSION:
        raise InvalidEvent(f"schema version {version!r}, not {SCHEMA_VERSION}")
    kind = obj.get("type")
    schema = _SCHEMAS.get(kind) if isinstance(kind, str) else None
    if schema is None:
        raise InvalidEvent(f"unknown event type {kind!r}")
    cls, checks = schema
    values = {}
    for name, check, required, type_text in checks:
        value = obj.get(name, _ABSENT)
        if value is _ABSENT:
            if required:
                raise InvalidEvent(f"{kind} event without its {name!r} field")
        elif check(value):
            values[name] = value
        else:
            raise InvalidEvent(f"{kind} field {name!r} should be {type_text}, not {value!r:.60}")
    return cls(**values)


def parse_line(raw: bytes) -> Event | None:
    """The event of one line of `events.jsonl`, None when the line holds none (see the module doc)."""
    try:
        return event_from_dict(json.loads(raw))
    except (ValueError, RecursionError):  # JSON, UTF-8 and schema errors are ValueErrors
        return None


def parse_lines(lines: Iterable[bytes]) -> tuple[list[Event], int]:
    """The events of `lines` (blank ones ignored) and how many lines held none."""
    events: list[Event] = []
    skipped = 0
    for line in lines:
        if not line.strip():
            continue
        event = parse_line(line)
        if event is None:
            skipped += 1
        else:
            events.append(event)
    return events, skipped


# ----- writing -----


@cache
def _written_fields(cls: type[Event]) -> tuple[tuple[str, bool], ...]:
    """(name, written only when set) of each field of an event class after its time, in their order."""
    return tuple((f.name, bool(f.metadata.get("written_when_set"))) for f in fields(cls) if f.name != "time")


def event_to_dict(event: Event) -> dict[str, Any]:
    """The JSON object of an event's line, which `event_from_dict` reads back: "v", "type", "time", then
    the fields in their order (one written only when set is left out while None)."""
    obj = {"v": SCHEMA_VERSION, "type": event.TYPE, "time": event.time}
    for name, when_set in _written_fields(type(event)):
        value = getattr(event, name)
        if value is not None or not when_set:
            obj[name] = value
    return obj


class EventWriter:
    """Appends events to a run's `events.jsonl`, one flushed line each."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file = open_file(self.path, "a", encoding="utf-8")  # closed in close()
        if _ends_torn(self.path):  # a killed writer's half line: end it, so our first event stands alone
            self._file.write("\n")

    def emit(self, event: Event) -> Event:
        """Write one event stamped with the time now, and return it so stamped; `ValueError` when its line
        would not read back as that event."""
        stamped = replace(event, time=time.time())
        line = json.dumps(event_to_dict(stamped), separators=(",", ":"))
        event_from_dict(json.loads(line))  # what the readers will see (tuples are lists, floats exact)
        self._file.write(line + "\n")
        self._file.flush()
        return stamped

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ends_torn(path: Path) -> bool:
    """True when the file's last line has no newline (a writer died mid-line)."""
    with open_file(path) as f:
        if f.seek(0, os.SEEK_END) == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


# ----- reading -----

READ_CHUNK_BYTES = 8 << 20
"""How much of an events file one read of a whole file takes: what reading a file of any size holds."""


class EventReader:
    """Follows one `events.jsonl` from a byte offset; one reader per file, used from one thread.

    Each read consumes the complete lines written since the last one. A torn last line is left for the
    next read. When the file was truncated, replaced or rewritten (it no longer ends a line where the
    last read stopped), the read starts again from byte 0 and sets `restarted`: whoever folded the
    earlier events must start their fold again too.
    """

    def __init__(self, path: str | os.PathLike[str], offset: int = 0) -> None:
        self.path = Path(path)
        """The file followed."""
        self.offset = offset
        """Bytes consumed so far: always just after a newline (or 0)."""
        self.size = 0
        """The file's size at the last read."""
        self.at_end = False
        """Whether the last read reached the end of the file (what is left, if anything, is a torn line)."""
        self.restarted = False
        """Whether the last read started again from byte 0 because the file was truncated or replaced."""
        self.skipped = 0
        """Lines read that held no event (see `parse_line`), since the last (re)start."""
        self._file_id: tuple[int, int] | None = None

    def skip_existing(self) -> None:
        """Start after the last complete line the file holds now: what is there already is history."""
        self.offset = 0
        try:
            with open_file(self.path) as f:
                self._file_id = _file_id(f)
                pos = f.seek(0, os.SEEK_END)
                while pos > 0:
                    block = min(pos, 1 << 16)
                    f.seek(pos - block)
                    newline = f.read(block).rfind(b"\n")
                    if newline >= 0:
                        self.offset = pos - block + newline + 1
                        return
                    pos -= block
        except FileNotFoundError:
            return

    def read_lines(self, max_bytes: int | None = None) -> list[bytes]:
        """The complete lines after `offset`, consumed (about `max_bytes` of them, at least one line).

        A missing file reads as no lines. Lines are raw bytes: `read` parses them; a reader that needs
        only some events may pick lines first and parse those with `parse_line`.
        """
        self.restarted = False
        try:
            f = open_file(self.path)  # closed below
        except FileNotFoundError:
            self.size, self.at_end = 0, True
            return []
        with f:
            file_id = _file_id(f)
            size = os.fstat(f.fileno()).st_size
            if self.offset and (
                size < self.offset
                or self._file_id not in (None, file_id)
                or not _line_ends_at(f, self.offset)
            ):
                self.offset, self.skipped, self.restarted = 0, 0, True
            self._file_id = file_id
            f.seek(self.offset)
            parts = [f.read(max_bytes or -1)]
            while max_bytes and len(parts[-1]) == max_bytes and b"\n" not in parts[-1]:
                parts.append(f.read(max_bytes))  # one line longer than max_bytes: read on to its end
        chunk = b"".join(parts)
        self.at_end = not max_bytes or len(parts[-1]) < max_bytes
        self.size = max(size, self.offset + len(chunk))
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        return chunk[:end].split(b"\n")

    def read(self, max_bytes: int | None = None) -> list[Event]:
        """The events of the complete lines after `offset` (see `read_lines`); unreadable lines counted."""
        events, skipped = parse_lines(self.read_lines(max_bytes))
        self.skipped += skipped
        return events

    def chunks(self) -> Iterator[list[bytes]]:
        """The complete lines after `offset` up to the end, consumed `READ_CHUNK_BYTES` at a time.

        Lazy: a chunk is read when the one before has been used, so a file of any size costs about
        one chunk of memory. Check `restarted` after each chunk when following a file that may be
        replaced meanwhile.
        """
        while True:
            yield self.read_lines(READ_CHUNK_BYTES)
            if self.at_end:
                return


def _file_id(f: Any) -> tuple[int, int]:
    st = os.fstat(f.fileno())
    return st.st_dev, st.st_ino


def _line_ends_at(f: Any, offset: int) -> bool:
    """Whether the byte before `offset` is a newline, i.e. the file was not rewritten under the reader."""
    f.seek(offset - 1)
    return f.read(1) == b"\n"


def iter_events(path: str | os.PathLike[str]) -> Iterator[Event]:
    """Every event of a file, in order, read a chunk at a time (a missing file has none)."""
    for lines in EventReader(path).chunks():
        yield from parse_lines(lines)[0]


def read_events(path: str | os.PathLike[str]) -> list[Event]:
    """Every event of a file (a missing file has none)."""
    return list(iter_events(path))


# ----- the fold -----

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
    Summarizing a 100,000-line stage-2 run this way takes a fraction of parsing it.
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


@dataclass
class RunState:
    """A run as its event stream tells it, folded one event at a time (`add`, `feed`).

    Only lifecycle, step and eval events change it (every event moves `last_time`), so a reader that
    needs no curves may skip the other lines, as long as it keeps the last valid line before each
    `run_started` and at the end (`feed_lines` does). Whether a `running` worker is still alive
    is no part of the stream: `runstatus.derive_status` adds it.
    """

    segments: int = 0
    """How many times a worker started the run (1 + resumes)."""
    first_start: RunStarted | None = None
    last_start: RunStarted | None = None
    finish: RunFinished | None = None
    """The `run_finished` that closed the last segment; None while a segment is open or before any."""
    last_step: Step | None = None
    best: Eval | None = None
    """The latest eval marked best."""
    last_eval: dict[str, Eval] = field(default_factory=dict)
    """The latest eval of each split."""
    last_time: float | None = None
    """The time of the latest event."""
    _closed: float = 0.0
    _open: float | None = None

    def feed(self, events: Iterable[Event]) -> None:
        """Fold more events, in file order."""
        for event in events:
            self.add(event)

    def feed_lines(self, lines: list[bytes]) -> None:
        """Fold the next complete lines of a file, parsing only those the fold needs (`summary_events`)."""
        self.feed(summary_events(lines))

    def add(self, event: Event) -> None:
        """Fold one event."""
        if isinstance(event, Step):
            self.last_step = event
        elif isinstance(event, Eval):
            self.last_eval[event.split] = event
            if event.best:
                self.best = event
        elif isinstance(event, RunStarted):
            if self._open is not None and self.last_time is not None:  # that segment died: it ran until
                self._closed += self.last_time - self._open  # its last event
            self._open = event.time
            self.segments += 1
            self.first_start = self.first_start or event
            self.last_start = event
            self.finish = None
        elif isinstance(event, RunFinished):
            if self._open is not None:
                self._closed += event.time - self._open
                self._open = None
            self.finish = event
        self.last_time = event.time

    @property
    def status(self) -> str:
        """ "pending" before any lifecycle event, "running" in an open segment, else the finish's status."""
        if self.finish is not None:
            return self.finish.status
        return "running" if self.last_start is not None else "pending"

    @property
    def lifecycle_time(self) -> float | None:
        """When the latest lifecycle event was written."""
        latest = self.finish or self.last_start
        return latest.time if latest is not None else None

    @property
    def step(self) -> int:
        """The latest training step (0 before the first)."""
        return self.last_step.step if self.last_step is not None else 0

    @property
    def best_metric(self) -> float | None:
        return self.best.primary if self.best is not None else None

    @property
    def error(self) -> str | None:
        """The error of the finish that closed the run, if any."""
        return self.finish.error if self.finish is not None else None

    @property
    def started(self) -> float | None:
        """When the first segment started."""
        return self.first_start.time if self.first_start is not None else None

    @property
    def duration(self) -> float | None:
        """Seconds running, summed over segments (an open or dead one up to its last event)."""
        if self.segments == 0:
            return None
        total = self._closed
        if self._open is not None and self.last_time is not None:
            total += self.last_time - self._open
        return total


def read_state(path: str | os.PathLike[str]) -> RunState:
    """The fold of every event of a file, read a chunk at a time (`feed_lines`)."""
    state = RunState()
    for lines in EventReader(path).chunks():
        state.feed_lines(lines)
    return state
