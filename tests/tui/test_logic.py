"""Unit tests of the plain modules: run index, table, config diff, keymap, follower, similarity."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from live_worker import owning

from dtvg_engine.errors import UserError
from dtvg_engine.runs.events import EventReader, EventWriter, read_events
from dtvg_engine.runs.history import History
from dtvg_engine.runs.runfolder import EVENTS
from dtvg_engine.runs.runstatus import summarize
from dtvg_tui import keys, runtable
from dtvg_tui.configdiff import config_diff, flatten
from dtvg_tui.fmt import fmt_duration
from dtvg_tui.runindex import RunIndex
from dtvg_tui.similarity import similarity_matrix

from .helpers import clone_run, dead_pid, replay, run_id, split_at_step, write_events


def test_run_index_matches_summarize_and_follows_appends(recorded_runs: Path):
    index = RunIndex(recorded_runs)
    changed, gone = index.scan()
    assert len(changed) == 7 and gone == []
    for summary in changed:
        assert summary == summarize(summary.run_dir)
    assert index.scan() == ([], [])
    # a run that is still writing: a recorded run replayed by a real EventWriter, half now, half later
    run_dir, events = clone_run(recorded_runs, "stage1-sst2", "20261125-180000-stage1-sst2")
    with owning(run_dir), EventWriter(run_dir / EVENTS) as writer:  # this process plays the worker
        replay(writer, events[: split_at_step(events, 5)], pid=os.getpid())
        (changed, _) = index.scan()
        assert [s.status for s in changed] == ["running"] and changed[0].step == 5
        replay(writer, events[split_at_step(events, 5) :])
    with open(run_dir / EVENTS, "a") as f:
        f.write('{"v": 1, "type": "step", "ti')  # a torn last line
    (changed, _) = index.scan()
    assert changed[0].status == "completed" and changed[0] == summarize(run_dir)
    assert changed[0].step == 12 and changed[0].best_metric == 0.625
    docs = {d["run_id"]: d for d in History(recorded_runs).all()}
    assert docs[run_dir.name]["status"] == "completed"


def test_run_index_sees_a_dead_worker_and_removed_runs(recorded_runs: Path):
    # a recorded run cut short after step 7, its worker gone: what `kill -9` leaves behind
    run_dir, events = clone_run(recorded_runs, "stage1-qnli", "x-stage1-qnli")
    write_events(run_dir, events[: split_at_step(events, 7)], pid=dead_pid())
    index = RunIndex(recorded_runs)
    changed, _ = index.scan()
    killed = {s.run_id: s for s in changed}["x-stage1-qnli"]
    assert killed.status == "killed" and killed.step == 7
    import shutil

    shutil.rmtree(run_dir)
    assert index.scan()[1] == ["x-stage1-qnli"]


def test_cached_reads_history_and_survives_corruption(recorded_runs: Path):
    index = RunIndex(recorded_runs)
    assert index.cached() == []  # no history yet
    History(recorded_runs).rebuild()
    assert len(index.cached()) == 7
    (recorded_runs / "history.json").write_text("{not json")
    assert index.cached() == []
    assert len(index.sync_history()) == 7  # rebuilt
    assert len(RunIndex(recorded_runs).cached()) == 7


def test_table_filter_and_sort(recorded_runs: Path):
    runs = RunIndex(recorded_runs).scan()[0]
    assert [s.task for s in runtable.view(runs, "status:failed")] == ["cb"]
    assert sorted((s.stage, s.method) for s in runtable.view(runs, "rte")) == [
        ("stage1", "pt"),
        ("stage2", "dtvg"),
        ("stage2", "pt"),
    ]
    assert len(runtable.view(runs, "stage:stage2 method:dtvg")) == 1
    assert runtable.view(runs, status="completed", sort="task", reverse=False)[0].task == "mnli"
    best = runtable.view(runs, sort="best_metric", reverse=True)
    assert best[0].best_metric == max(s.best_metric for s in runs if s.best_metric is not None)
    assert best[-1].task == "cb"  # the failed run has no metric: last in either direction
    assert runtable.view(runs, sort="best_metric", reverse=False)[-1].task == "cb"
    assert runtable.row_cells(best[0])[runtable.COLUMN_KEYS.index("duration")] == fmt_duration(
        best[0].duration
    )


def test_config_diff():
    a = {"run_id": "1", "lr": 0.3, "steps": 10, "nested": {"x": 1}}
    b = {"run_id": "2", "lr": 0.1, "steps": 10, "nested": {"x": 1}, "extra": "y"}
    assert flatten(a)["nested.x"] == 1
    assert config_diff([a, b], only_differences=True) == [
        ("extra", ["—", "y"], True),
        ("lr", ["0.3", "0.1"], True),
    ]
    assert len(config_diff([a, b])) == 4


def test_keymap_files(tmp_path: Path):
    toml = tmp_path / "keymap.toml"
    toml.write_text('[keymap]\n"dtvg.runs.stop" = "ctrl+s"\n')
    assert keys.load_keymap(toml) == {"dtvg.runs.stop": "ctrl+s"}
    js = tmp_path / "keymap.json"
    js.write_text('{"dtvg.app.new_run": "N"}')
    assert keys.load_keymap(js) == {"dtvg.app.new_run": "N"}
    js.write_text('{"dtvg.nope": "x"}')
    with pytest.raises(UserError, match="unknown binding id"):
        keys.load_keymap(js)
    assert keys.load_keymap(None) == {}


def test_reader_reads_in_chunks_and_waits_for_whole_lines(recorded_runs: Path, tmp_path: Path):
    recorded = (recorded_runs / run_id(recorded_runs, "stage2-rte-dtvg") / EVENTS).read_bytes()
    last_line = recorded.rstrip(b"\n").rfind(b"\n") + 1
    path = tmp_path / "events.jsonl"
    path.write_bytes(recorded[: last_line + 20])  # the last line (run_finished) half-written
    reader = EventReader(path)
    seen = []
    reads = 0
    while not reader.at_end:  # 512 bytes is less than the run_started line: that read grows
        seen += reader.read(max_bytes=512)
        reads += 1
    expected = read_events(recorded_runs / run_id(recorded_runs, "stage2-rte-dtvg") / EVENTS)
    assert seen == expected[:-1] and len(seen) == 46 and reads > 10
    assert reader.offset == last_line and reader.skipped == 0  # the torn line is left for later
    with open(path, "ab") as f:
        f.write(recorded[last_line + 20 :])
    assert reader.read() == expected[-1:] and expected[-1].TYPE == "run_finished"


def test_similarity_matrix_is_eq2():
    import numpy as np

    a = np.array([[1.0, 0.0], [1.0, 2.0]])  # token sum (2, 2)
    b = np.array([[0.0, 1.0], [1.0, 0.0]])  # token sum (1, 1)
    m = similarity_matrix([a, b])
    assert m == [[8 / 4, 4 / 4], [4 / 4, 2 / 4]]
    with pytest.raises(UserError):
        similarity_matrix([a, np.zeros((3, 2))])


def test_step_ticks_are_whole_steps():
    from dtvg_tui.widgets.curves import step_ticks

    assert step_ticks([1, 16]) == [1, 5, 10, 16]  # the recorded stage-2 runs' 16 steps
    assert step_ticks([4, 12]) == [4, 6, 8, 10, 12]
    assert step_ticks([1, 2]) == [1, 2] and step_ticks([3, 3]) == [3]
    assert step_ticks([0, 49_990]) == [0, 20_000, 40_000, 49_990]
