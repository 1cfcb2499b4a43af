"""The history index: derived from run folders, rebuilt when lost, safe under concurrent writers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from live_worker import owning
from tinydb import TinyDB

from dtvg_engine.runs import runfolder, runmeta, runstatus
from dtvg_engine.runs.events import EventWriter, RunFinished, RunStarted
from dtvg_engine.runs.history import TABLE, History

REPO = Path(__file__).resolve().parents[1]
CONFIG = {"stage": "stage1", "method": "pt", "task": "rte", "model": "tiny-llama", "steps": 10}


def make_run(runs_dir: Path, label: str, status: str | None = None, pid: int | None = None) -> Path:
    """A run folder; with `status`, one that started (as `pid`, default this process) and finished."""
    run = runfolder.create_run(runs_dir, "stage1", label, {**CONFIG, "task": label})
    if status or pid:
        with EventWriter(run / runfolder.EVENTS) as events:
            started = RunStarted(
                run_id=run.name, stage="stage1", method="pt", task=label, pid=pid or os.getpid(), config={}
            )
            events.emit(started)
            if status:
                events.emit(RunFinished(status=status, summary={}, error=None))
    return run


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def leftovers(runs_dir: Path) -> list[str]:
    """Files in the runs directory that are neither runs nor the index and its lock."""
    return sorted(p.name for p in runs_dir.iterdir() if p.is_file() and p.name not in ("history.json.lock",))


def test_rebuild_indexes_every_run_and_is_a_tinydb_file(runs_dir):
    a = make_run(runs_dir, "rte", "completed")
    b = make_run(runs_dir, "cola", "failed")
    (runs_dir / runfolder.INITS_DIR).mkdir()
    docs = History(runs_dir).rebuild()
    assert [d["run_id"] for d in docs] == sorted([a.name, b.name])
    with TinyDB(runs_dir / "history.json") as db:
        stored = {d["run_id"]: d for d in db.table(TABLE).all()}
    assert stored[a.name] == runstatus.summarize(a).to_dict()
    assert stored[b.name]["status"] == "failed"
    assert leftovers(runs_dir) == ["history.json"]


def test_all_rebuilds_a_deleted_or_corrupt_index(runs_dir):
    runs = [make_run(runs_dir, f"t{i}", "completed") for i in range(3)]
    history = History(runs_dir)
    assert [d["run_id"] for d in history.all()] == [r.name for r in runs]
    (runs_dir / "history.json").unlink()
    assert [d["run_id"] for d in history.all()] == [r.name for r in runs]
    for garbage in ("{not json", "", "[1, 2]", '{"runs": {"1": 5}}'):
        (runs_dir / "history.json").write_text(garbage)
        assert [d["run_id"] for d in history.all()] == [r.name for r in runs]
    assert json.loads((runs_dir / "history.json").read_text())[TABLE]


def test_upsert_into_a_lost_index_keeps_the_other_runs(runs_dir):
    a = make_run(runs_dir, "rte", "completed")
    b = make_run(runs_dir, "cola")
    history = History(runs_dir)
    (runs_dir / "history.json").write_text("garbage")
    assert history.upsert(b)["status"] == "pending"
    stored = json.loads((runs_dir / "history.json").read_text())[TABLE].values()
    assert sorted(d["run_id"] for d in stored) == sorted([a.name, b.name])


def test_upsert_replaces_one_document_after_tag_and_status_changes(runs_dir):
    run = make_run(runs_dir, "rte")
    history = History(runs_dir)
    assert history.get(run.name)["status"] == "pending"
    with owning(run), EventWriter(run / runfolder.EVENTS) as events:  # this process plays the worker
        events.emit(
            RunStarted(run_id=run.name, stage="stage1", method="pt", task="rte", pid=os.getpid(), config={})
        )
        assert history.upsert(run)["status"] == "running"
    runmeta.update_meta(run, tags=["good"], note="keep")
    history.upsert(run)
    doc = history.get(run.name)
    assert (doc["tags"], doc["note"]) == (["good"], "keep")
    assert len(history.all()) == 1
    assert history.get("nope") is None


def test_all_follows_runs_added_deleted_and_killed_behind_its_back(runs_dir):
    history = History(runs_dir)
    done = make_run(runs_dir, "done", "completed")
    live = make_run(runs_dir, "live", pid=os.getpid())
    with owning(live):  # this process plays its worker
        history.rebuild()
        added = make_run(runs_dir, "added", "stopped")
        dead = make_run(runs_dir, "dead", pid=dead_pid())
        # What the dying worker had told the index before it was killed:
        history.upsert(dead)
        stale = json.loads((runs_dir / "history.json").read_text())
        for doc in stale[TABLE].values():
            if doc["run_id"] == dead.name:
                doc["status"] = "running"
        (runs_dir / "history.json").write_text(json.dumps(stale))
        for name in os.listdir(done):
            (done / name).unlink()
        done.rmdir()
        docs = {d["run_id"]: d["status"] for d in history.all()}
    assert docs == {live.name: "running", added.name: "stopped", dead.name: "killed"}


def test_remove_drops_a_document(runs_dir):
    a = make_run(runs_dir, "rte", "completed")
    history = History(runs_dir)
    history.rebuild()
    history.remove(a.name)
    with TinyDB(runs_dir / "history.json") as db:
        assert db.table(TABLE).all() == []
    history.remove("not-there")


WRITER = """
import sys
from dtvg_engine.runs.history import History
history = History(sys.argv[1])
for _ in range(int(sys.argv[2])):
    for run_dir in sys.argv[3:]:
        history.upsert(run_dir)
"""


def test_concurrent_writers_never_corrupt_the_index(runs_dir):
    runs = [make_run(runs_dir, f"task{i}", "completed") for i in range(8)]
    History(runs_dir).rebuild()
    (runs_dir / "history.json").unlink()  # the first writers race to rebuild it too
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(runs_dir), "15", *map(str, runs[2 * i : 2 * i + 2])], cwd=REPO
        )
        for i in range(4)
    ]
    seen_valid = 0
    while any(w.poll() is None for w in writers):  # a lock-free reader sees a whole file every time
        path = runs_dir / "history.json"
        if path.exists():
            json.loads(path.read_text())
            seen_valid += 1
    assert [w.wait() for w in writers] == [0, 0, 0, 0]
    data = json.loads((runs_dir / "history.json").read_text())
    assert sorted(d["run_id"] for d in data[TABLE].values()) == [r.name for r in runs]
    assert leftovers(runs_dir) == ["history.json"]
    assert seen_valid > 0
