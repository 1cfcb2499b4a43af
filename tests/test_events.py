"""The event stream: one schema, one resumable reader, one fold, and every reader agreeing.

Issue 11, item 8: one line that parsed but lacked `time` or had `"step": "x"` crashed `dtvg runs list`
and `runs show` for the whole runs directory, and after torn or garbage lines the dashboard disagreed
with the CLI. Every reader now goes through `dtvg_engine.runs.events`; the property test at the end feeds
damaged streams to all of them and checks they agree with the fold of the good lines alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live_worker import owning
from rich.progress import Progress

from dtvg_engine.runs import events as ev
from dtvg_engine.runs import runfolder, runstatus, watch
from dtvg_engine.runs.history import History
from dtvg_engine.studies import report, studyresults
from dtvg_tui.runindex import RunIndex
from dtvg_tui.series import RunSeries

REPO = Path(__file__).resolve().parents[1]
_VENV_DTVG = Path(sys.executable).with_name("dtvg")
DTVG = str(_VENV_DTVG) if _VENV_DTVG.exists() else "dtvg"

CONFIG = {"stage": "stage1", "method": "pt", "task": "rte", "model": "tiny-llama", "steps": 300}


def line(type: str, time: float = 1.0, **fields) -> bytes:
    """One events.jsonl line as the worker writes it (compact JSON, schema v1)."""
    return json.dumps({"v": 1, "type": type, "time": time, **fields}, separators=(",", ":")).encode()


def started(time: float = 1.0, pid: int | None = None) -> bytes:
    return line(
        "run_started", time, run_id="r", stage="stage1", method="pt", task="rte",
        pid=os.getpid() if pid is None else pid, config=CONFIG,
    )  # fmt: skip


def step(n: int, time: float | None = None) -> bytes:
    return line(
        "step", 1.0 + n if time is None else time, step=n, loss=0.5, lr={"prompt": 0.3}, samples_per_s=8.0
    )


def evaluation(n: int, primary: float, best: bool, split: str = "validation") -> bytes:
    return line(
        "eval", 1.5 + n, step=n, split=split, metrics={"accuracy": primary}, primary=primary, best=best
    )


def finished(time: float, status: str = "completed") -> bytes:
    return line("run_finished", time, status=status, summary={}, error=None)


def completed_run(steps: int = 300) -> list[bytes]:
    """A stage-1 run that completed `steps` steps, its best validation score 0.75 at step 200."""
    lines = [started()]
    for n in range(1, steps + 1):
        lines.append(step(n))
        if n % 100 == 0:
            lines.append(evaluation(n, 0.5 + n / 800 if n < 300 else 0.6, best=n < 300))
    return [*lines, finished(steps + 2.0)]


def make_run(runs_dir: Path, lines: list[bytes], tail: bytes = b"", label: str = "rte") -> Path:
    run_dir = runfolder.create_run(runs_dir, "stage1", label, CONFIG)
    (run_dir / runfolder.EVENTS).write_bytes(b"".join(raw + b"\n" for raw in lines) + tail)
    return run_dir


def dtvg(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DTVG, *map(str, args)], capture_output=True, text=True, timeout=120)


# ----- the schema -----

UNREADABLE = {
    "torn": step(7)[:25],
    "binary": b"\x00\xff\xfe garbage \x9c",
    "not json": b"step 7 done",
    "not an object": b"[1, 2, 3]",
    "too deep": b"[" * 100_000,
    "wrong version": step(7).replace(b'"v":1', b'"v":2'),
    "version true": step(7).replace(b'"v":1', b'"v":true'),
    "unknown type": line("mystery", 1.0, step=7),
    "no time": json.dumps(
        {"v": 1, "type": "step", "step": 7, "loss": 0.5, "lr": {}, "samples_per_s": 1.0}
    ).encode(),
    "time as text": line("step", "now", step=7, loss=0.5, lr={}, samples_per_s=1.0),  # type: ignore[arg-type]
    "step as text": line("step", 1.0, step="x", loss=0.5, lr={}, samples_per_s=1.0),
    "step as bool": line("step", 1.0, step=True, loss=0.5, lr={}, samples_per_s=1.0),
    "lr of text": line("step", 1.0, step=7, loss=0.5, lr={"prompt": "fast"}, samples_per_s=1.0),
    "selected not a list": line("group", 1.0, step=7, ranked=[], selected="qnli", ts=0.1, kc=0.0, scales={}),
    "ranked item without sim": line(
        "group", 1.0, step=7, ranked=[{"task": "qnli"}], selected=[], ts=0.1, kc=0.0, scales={}
    ),
    "best as number": line("eval", 1.0, step=7, split="validation", metrics={}, primary=0.5, best=1),
    "unknown status": line("run_finished", 1.0, status="exploded", summary={}, error=None),
    "no status": line("run_finished", 1.0, summary={}, error=None),
    "pid as text": line("run_started", 1.0, run_id="r", stage="stage1", method="pt", pid="12", config={}),
}


@pytest.mark.parametrize("raw", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_lines_that_hold_no_event_read_as_none(raw: bytes):
    assert ev.parse_line(raw) is None


def test_events_read_as_their_dataclasses_with_nan_kept_and_new_fields_ignored():
    event = ev.parse_line(
        line("step", 2.5, step=7, loss=float("nan"), lr={"prompt": 0.3}, samples_per_s=1, extra=1)
    )
    assert isinstance(event, ev.Step) and event.step == 7 and math.isnan(event.loss) and event.time == 2.5
    start = ev.parse_line(started())
    assert isinstance(start, ev.RunStarted) and start.label == "rte"
    assert (start.executor, start.job_id, start.host) == ("local", None, None)  # older runs: local
    slurm = ev.parse_line(line(
        "run_started", 1.0, run_id="r", stage="stage2", method="dtvg", target="rte", pid=None, config={},
        host="node7", executor="slurm", job_id="4242",
    ))  # fmt: skip
    assert isinstance(slurm, ev.RunStarted) and (slurm.host, slurm.executor, slurm.job_id) == (
        "node7",
        "slurm",
        "4242",
    )
    test_eval = ev.parse_line(line("eval", 3.0, step=None, split="test", metrics={}, primary=0.5, best=False))
    assert isinstance(test_eval, ev.Eval) and test_eval.step is None  # a run with no validation checkpoint


def test_the_writer_refuses_an_event_its_readers_would_skip(tmp_path: Path):
    with ev.EventWriter(tmp_path / "events.jsonl") as writer:
        with pytest.raises(ValueError, match="step field 'step' should be int"):
            writer.emit(ev.Step(step="x", loss=0.5, lr={}, samples_per_s=1.0))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="run_finished field 'status' should be"):
            writer.emit(ev.RunFinished(status="exploded", summary={}, error=None))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="unknown event type"):
            writer.emit(ev.Event())
        written = writer.emit(ev.Step(step=1, loss=0.5, lr={"prompt": 0.1}, samples_per_s=2.0))
    events = ev.read_events(tmp_path / "events.jsonl")
    assert events == [written] and written.time > 0


_ARCHITECTURE = (REPO / "docs" / "architecture.md").read_text()
_EVENT_STREAM = _ARCHITECTURE.split("## Event stream\n")[1].split("\n## ")[0]
DOCUMENTED = re.findall(r"^\| `(\w+)` \| (.*) \|$", _EVENT_STREAM, re.M)
"""(type, fields) of each row of the event table in docs/architecture.md."""

SAMPLES: dict[type[ev.Event], dict] = {
    ev.RunStarted: dict(
        run_id="r", stage="stage2", method="dtvg", pid=7, config={"lr": 0.3}, host="node7", executor="slurm",
        job_id="42", target="rte",
    ),
    ev.Step: dict(step=1, loss=0.5, lr={"prompt": 0.3}, samples_per_s=8.0),
    ev.Group: dict(
        step=1, ranked=[{"task": "qnli", "sim": 0.5}], selected=["qnli"], ts=0.5, kc=0.1, scales={"rte": 1.0}
    ),
    ev.Eval: dict(step=2, split="validation", metrics={"accuracy": 0.75}, primary=0.75, best=True),
    ev.Checkpoint: dict(step=2, path="checkpoint/state.safetensors"),
    ev.Artifact: dict(kind="prompt", path="prompt.safetensors"),
    ev.Log: dict(level="info", message="hello"),
    ev.RunFinished: dict(status="completed", summary={"steps": 2}, error=None),
}  # fmt: skip
"""Fields of one event of each class, in the order of their class."""


def test_every_documented_event_type_has_a_class_that_the_writer_round_trips(tmp_path: Path):
    """The worker writes the classes the readers read: each event comes back equal, its line holding
    "v", "type", "time", then its fields in their class's order (as lines were written before)."""
    assert [kind for kind, _ in DOCUMENTED] == list(ev.EVENT_TYPES)
    assert set(SAMPLES) == set(ev.EVENT_CLASSES)
    for (kind, documented), cls in zip(DOCUMENTED, ev.EVENT_CLASSES, strict=True):
        fields_named = set(re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", documented)))  # not the notes
        assert cls.TYPE == kind and fields_named == {f.name for f in dataclasses.fields(cls)} - {"time"}
    path = tmp_path / "events.jsonl"
    with ev.EventWriter(path) as writer:
        written = [writer.emit(cls(**fields)) for cls, fields in SAMPLES.items()]
    assert ev.read_events(path) == written
    for raw, (cls, fields) in zip(path.read_bytes().splitlines(), SAMPLES.items(), strict=True):
        assert list(json.loads(raw)) == ["v", "type", "time", *fields], cls.TYPE


def test_a_run_started_line_holds_the_task_or_the_target_not_both(tmp_path: Path):
    """Stage 1 names its task, stage 2 its target, each as the last field of the line."""
    fields = dict(run_id="r", stage="stage1", method="pt", pid=7, config={})
    with ev.EventWriter(tmp_path / "events.jsonl") as writer:
        writer.emit(ev.RunStarted(**fields, task="rte"))
    line = json.loads((tmp_path / "events.jsonl").read_bytes())
    assert list(line) == ["v", "type", "time", *fields, "host", "executor", "job_id", "task"]


# ----- the reader -----


def test_reader_leaves_a_torn_last_line_and_counts_what_it_skips(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(
        started() + b"\n" + UNREADABLE["step as text"] + b"\n\n" + step(1) + b"\n" + step(2)[:30]
    )
    reader = ev.EventReader(path)
    assert [type(e) for e in reader.read()] == [ev.RunStarted, ev.Step]
    assert reader.skipped == 1 and reader.at_end and reader.offset == path.stat().st_size - 30
    assert reader.read() == [] and reader.at_end  # the torn line is still being written: nothing more
    with open(path, "ab") as f:
        f.write(step(2)[30:] + b"\n")
    assert [e.step for e in reader.read()] == [2] and not reader.restarted  # type: ignore[attr-defined]


def test_reader_starts_again_when_the_file_is_truncated_replaced_or_rewritten(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(started() + b"\n" + step(1) + b"\n" + step(2) + b"\n")
    reader = ev.EventReader(path)
    assert len(reader.read()) == 3
    path.write_bytes(started(5.0) + b"\n")  # truncated: shorter than what was read
    assert [e.time for e in reader.read()] == [5.0] and reader.restarted
    assert reader.read() == [] and not reader.restarted
    replacement = tmp_path / "new.jsonl"
    replacement.write_bytes(started(6.0) + b"\n" + step(1) + b"\n" + step(2) + b"\n")
    os.replace(replacement, path)  # a new file (another inode), longer than the offset
    assert [e.time for e in reader.read()] == [6.0, 2.0, 3.0] and reader.restarted
    path.write_bytes(
        started(7.0) + b"\n" + step(1) + b" " * 60 + b"\n" + step(3) + b"\n"
    )  # rewritten in place
    assert [e.time for e in reader.read()] == [7.0, 2.0, 4.0] and reader.restarted


def test_reader_can_skip_what_a_file_holds_already(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    reader = ev.EventReader(path)
    reader.skip_existing()  # no file yet: everything is new
    path.write_bytes(started() + b"\n" + finished(2.0, "stopped") + b"\n" + step(3)[:20])
    assert len(reader.read()) == 2
    resumed = ev.EventReader(path)
    resumed.skip_existing()  # a resumed run: its old finish is history, and so is a torn line
    with open(path, "ab") as f:
        f.write(b"\n" + started(4.0) + b"\n")
    assert [type(e) for e in resumed.read()] == [ev.RunStarted] and resumed.skipped == 1


# ----- the fold -----


def test_fold_of_a_resumed_run_whose_first_worker_died():
    state = ev.RunState()
    state.feed(ev.parse_lines([started(10.0), step(1, 11.0), step(2, 14.0)])[0])
    assert (state.status, state.step, state.duration) == ("running", 2, 4.0)
    state.feed(ev.parse_lines([started(20.0), step(2, 21.0), evaluation(2, 0.7, True), finished(25.0)])[0])
    assert (state.status, state.step, state.segments, state.started) == ("completed", 2, 2, 10.0)
    assert state.duration == 4.0 + 5.0 and state.best_metric == 0.7 and state.error is None
    assert state.last_eval["validation"].primary == 0.7


# ----- item 8: one bad line no longer takes a runs directory down -----


@pytest.mark.parametrize("bad", ["no time", "step as text"])
def test_runs_list_and_show_read_past_a_bad_line(runs_dir: Path, bad: str):
    good = make_run(runs_dir, completed_run(), label="good")
    lines = completed_run()
    damaged = make_run(runs_dir, [*lines[:-1], UNREADABLE[bad], lines[-1]], label="damaged")
    listed = dtvg("runs", "list", "--json", "--runs-dir", runs_dir)
    assert listed.returncode == 0, listed.stderr
    docs = {doc["run_id"]: doc for doc in json.loads(listed.stdout)}
    for run_dir in (good, damaged):
        doc = docs[run_dir.name]
        assert (doc["status"], doc["step"], doc["total_steps"], doc["best_metric"]) == (
            "completed",
            300,
            300,
            0.75,
        )
        assert (doc["executor"], doc["job_id"]) == ("local", None)
    shown = dtvg("runs", "show", damaged.name, "--json", "--runs-dir", runs_dir)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["step"] == 300


def test_an_index_written_before_executor_existed_is_brought_up_to_date(runs_dir: Path):
    run_dir = make_run(runs_dir, completed_run(3))
    History(runs_dir).rebuild()
    path = runs_dir / "history.json"
    data = json.loads(path.read_text())
    for doc in data["runs"].values():
        del doc["executor"], doc["job_id"], doc["host"]
    path.write_text(json.dumps(data))
    (doc,) = History(runs_dir).all()
    assert doc == runstatus.summarize(run_dir).to_dict() and doc["executor"] == "local"


# ----- every reader agrees, whatever the damage (property test) -----

REQUIRED_WRONG = {
    # a value of the wrong type for each required field (None only where None is not allowed)
    "time": ["now", None, True],
    "step": ["x", 1.5, True],  # an eval's step may be None
    "loss": ["x", None, [0.5]],
    "lr": [["prompt", 0.3], {"prompt": "x"}],
    "samples_per_s": ["fast", False],
    "ranked": [{"qnli": 0.1}, [{"task": "qnli", "sim": "high"}]],
    "selected": ["qnli", [1]],
    "ts": ["x", None],
    "kc": [{}, None],
    "scales": [[1.0], {"qnli": "x"}],
    "split": [1, None],
    "metrics": [[0.5], {"accuracy": "x"}],
    "best": [1, "yes", None],
    "status": ["exploded", None, 1],
    "summary": [[], "x"],
    "run_id": [1, None],
    "stage": [2, None],
    "method": [[], None],
    "config": [[], "x", None],
    "level": [1],
    "message": [None],
    "kind": [3],
    "path": [None, 2],
}
SOURCES = ("mnli", "qnli", "sst2")
numbers = st.floats(allow_nan=True, allow_infinity=True)


@st.composite
def good_runs(draw) -> list[dict]:
    """The events of a run: up to three segments (resumed from a checkpoint, died or finished)."""
    events: list[dict] = []
    now, done = 1_000.0, 0

    def emit(type: str, **fields) -> None:
        nonlocal now
        now += draw(st.floats(0.0, 50.0))
        events.append({"v": 1, "type": type, "time": now, **fields})

    for _ in range(draw(st.integers(0, 3))):
        emit(
            "run_started",
            run_id="r",
            stage="stage2",
            method="dtvg",
            target="rte",
            pid=os.getpid(),
            config=CONFIG,
        )
        done = draw(st.integers(0, done))  # the checkpoint it resumed from
        for _ in range(draw(st.integers(0, 6))):
            done += 1
            selected = draw(st.lists(st.sampled_from(SOURCES), unique=True))
            ranked = [{"task": s, "sim": draw(numbers)} for s in SOURCES]
            emit(
                "group",
                step=done,
                ranked=ranked,
                selected=selected,
                ts=0.5,
                kc=draw(numbers),
                scales={"rte": 1.0},
            )
            emit("step", step=done, loss=draw(numbers), lr={"prompt": 0.3}, samples_per_s=draw(numbers))
            extra = draw(st.sampled_from(["", "eval", "test", "checkpoint", "log", "artifact"]))
            if extra in ("eval", "test"):
                primary = draw(st.one_of(numbers, st.none()))
                split = "validation" if extra == "eval" else "test"
                emit(
                    "eval",
                    step=done,
                    split=split,
                    metrics={"accuracy": 0.5},
                    primary=primary,
                    best=draw(st.booleans()),
                )
            elif extra == "checkpoint":
                emit("checkpoint", step=done, path="checkpoint/state.safetensors")
            elif extra == "log":
                emit("log", level="info", message=draw(st.text(max_size=8)))
            elif extra == "artifact":
                emit("artifact", kind="prompt", path="prompt.safetensors")
        if draw(st.booleans()):
            emit("run_finished", status=draw(st.sampled_from(ev.TERMINAL_STATUSES)), summary={}, error=None)
    return events


def encode(event: dict) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


@st.composite
def damaged_lines(draw, good: list[dict], previous: dict | None) -> bytes:
    """One line that holds no event: torn, binary, not an object, another version, unknown type,
    a required field missing or of the wrong type. Often a damaged copy of the `previous` event, so that
    a line which looks like the last step (or the last line before a restart) is none."""
    model = previous if previous is not None and draw(st.booleans()) else None
    model = model or (
        draw(st.sampled_from(good)) if good else {"v": 1, "type": "step", "time": 1.0, "step": 1}
    )
    kind = draw(st.sampled_from(["torn", "binary", "not object", "version", "type", "missing", "wrong"]))
    if kind == "torn":
        raw = encode(model)
        return raw[: draw(st.integers(1, len(raw) - 1))]
    if kind == "binary":
        return draw(st.binary(min_size=1, max_size=30)).replace(b"\n", b"")
    if kind == "not object":
        return json.dumps(
            draw(st.one_of(st.integers(), st.text(max_size=5), st.lists(st.integers())))
        ).encode()
    if kind == "version":
        return encode({**model, "v": draw(st.sampled_from([2, "1", True, 0.5]))})
    if kind == "type":
        return encode({**model, "type": draw(st.sampled_from(["mystery", 5, None, "Step"]))})
    required = [k for k in model if k in REQUIRED_WRONG]
    name = draw(st.sampled_from(required))
    if kind == "missing":
        return encode({k: v for k, v in model.items() if k != name})
    return encode({**model, name: draw(st.sampled_from(REQUIRED_WRONG[name]))})


@st.composite
def damaged_streams(draw) -> tuple[list[dict], bytes]:
    """(the good events, a file holding them with damaged lines between and maybe a torn tail)."""
    good = draw(good_runs())
    out = b""
    previous = None
    for event in [*good, None]:
        for _ in range(draw(st.integers(0, 2))):
            out += draw(damaged_lines(good, previous)) + b"\n"
        if event is not None:
            out += encode(event) + b"\n"
        previous = event
    if draw(st.booleans()):
        out += draw(damaged_lines(good, good[-1] if good else None))  # a torn last line, no newline yet
    return good, out


def comparable(state: ev.RunState | runstatus.RunSummary) -> str:
    """What every reader must agree on, as JSON text (so NaN compares equal to NaN)."""
    return json.dumps(
        (state.status, state.step, state.best_metric, state.duration, state.started, state.error)
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=damaged_streams(), cut=st.floats(0.0, 1.0), chunk=st.sampled_from([64, 300, 8 << 20]))
def test_every_reader_agrees_on_a_damaged_stream(tmp_path_factory, stream, cut, chunk):
    good, data = stream
    for raw in data.split(b"\n"):
        if raw.strip() and raw not in {encode(e) for e in good}:
            assert ev.parse_line(raw) is None, raw  # the damage really is unreadable
    expected = ev.RunState()
    expected.feed(ev.event_from_dict(e) for e in good)
    expected_groups = [(e["step"], tuple(e["selected"])) for e in good if e["type"] == "group"]

    runs_dir = tmp_path_factory.mktemp("runs")
    run_dir = runfolder.create_run(runs_dir, "stage2", "rte", {**CONFIG, "stage": "stage2", "target": "rte"})
    with owning(run_dir):  # this process plays the worker that wrote the stream
        path = run_dir / runfolder.EVENTS
        index = RunIndex(runs_dir)
        series, reader = RunSeries(), ev.EventReader(path)
        progress = Progress(disable=True)
        followed = watch._Followed(run_dir, progress)
        split = int(len(data) * cut)
        with mock.patch.object(ev, "READ_CHUNK_BYTES", chunk):
            for part in (data[:split], data[split:]):  # read once mid-way (maybe mid-line), then to the end
                with open(path, "ab") as f:
                    f.write(part)
                index.scan()
                while True:
                    events = reader.read(max_bytes=chunk)
                    assert not reader.restarted
                    series.feed(events)
                    if reader.at_end:
                        break
                followed.poll(progress)
            # and the readers of a whole file, a chunk at a time
            summary = runstatus.summarize(run_dir)
            assert comparable(summary) == comparable(expected)
            listed = index.summary(run_dir.name)  # the Runs table
            assert listed is not None and json.dumps(listed.to_dict()) == json.dumps(summary.to_dict())
            assert comparable(series) == comparable(expected)  # the run detail
            assert comparable(followed.state) == comparable(expected)  # the foreground progress bars
            assert followed.finished or expected.finish is None  # (it stops following at a segment's finish)
            assert report.group_steps(run_dir) == expected_groups
            (doc,) = History(runs_dir).all()
            assert json.dumps(doc) == json.dumps(summary.to_dict())
            test = expected.last_eval.get("test")
            score = test.primary if test is not None else None
            assert json.dumps(studyresults.test_score(run_dir)) == json.dumps(score)


# ----- a long events file is read a chunk at a time -----


def test_a_long_events_file_is_folded_in_chunks_not_held_whole(tmp_path: Path):
    """Folding (as `runs list` does), scoring or following a long run holds about one read chunk, never
    the file (issue 24: `runs list` over a 285 MB events file peaked at five times the file)."""
    import tracemalloc

    lines = [started(1.0)]
    for n in range(1, 20_001):
        lines.append(step(n))
        if n % 5_000 == 0:
            lines.append(evaluation(n, n / 40_000, best=True))
    lines += [evaluation(20_000, 0.4, False, split="test"), finished(30_000.0)]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / runfolder.CONFIG).write_text(json.dumps({**CONFIG, "steps": 20_000}))
    path = run_dir / runfolder.EVENTS
    path.write_bytes(b"\n".join(lines) + b"\n")
    size = path.stat().st_size  # about 2 MB
    chunk = 64 << 10
    with mock.patch.object(ev, "READ_CHUNK_BYTES", chunk):
        for read in (ev.read_state, studyresults.test_score, report.group_steps, next_event):
            tracemalloc.start()
            try:
                read(path if read in (ev.read_state, next_event) else run_dir)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert peak < size / 4, (read.__name__, peak, size)
    state = ev.read_state(path)
    assert (state.status, state.step, state.best_metric) == ("completed", 20_000, 0.5)
    assert state.last_eval["test"].primary == 0.4


def next_event(path: Path) -> ev.Event:
    """The first event of a file, read lazily."""
    return next(ev.iter_events(path))
