"""Unit tests of the plain modules: run index, table, config diff, keymap, follower, similarity."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dtvg_engine.errors import UserError
from dtvg_engine.history import History
from dtvg_engine.runfolder import EVENTS, summarize
from dtvg_tui import keys, runtable
from dtvg_tui.configdiff import config_diff, flatten
from dtvg_tui.fmt import fmt_duration
from dtvg_tui.follow import EventFollower
from dtvg_tui.runindex import RunIndex
from dtvg_tui.similarity import similarity_matrix
from dtvg_tui.synthetic import stage1_config, training_events, write_run


def test_run_index_matches_summarize_and_follows_appends(demo_runs: Path):
    index = RunIndex(demo_runs)
    changed, gone = index.scan()
    assert len(changed) == 5 and gone == []
    for summary in changed:
        assert summary == summarize(summary.run_dir)
    assert index.scan() == ([], [])
    # a run that is still writing: append half of a new run's events, then the rest
    config = stage1_config("cola")
    events = training_events("20250615-160000-stage1-cola", config, 10, pid=os.getpid())
    run_dir = write_run(demo_runs, "20250615-160000-stage1-cola", config, events[:5])
    (changed, _) = index.scan()
    assert [s.status for s in changed] == ["running"] and changed[0].step == 4
    with open(run_dir / EVENTS, "a") as f:
        for event in events[5:]:
            f.write(json.dumps({"v": 1, **event}) + "\n")
        f.write('{"v": 1, "type": "step", "ti')  # a torn last line
    (changed, _) = index.scan()
    assert changed[0].status == "completed" and changed[0] == summarize(run_dir)
    docs = {d["run_id"]: d for d in History(demo_runs).all()}
    assert docs[run_dir.name]["status"] == "completed"


def test_run_index_sees_a_dead_worker_and_removed_runs(demo_runs: Path):
    config = stage1_config("cola")
    events = training_events("x-stage1-cola", config, 10, status=None)  # DEAD_PID, no run_finished
    run_dir = write_run(demo_runs, "x-stage1-cola", config, events)
    index = RunIndex(demo_runs)
    changed, _ = index.scan()
    assert {s.run_id: s.status for s in changed}["x-stage1-cola"] == "killed"
    import shutil

    shutil.rmtree(run_dir)
    assert index.scan()[1] == ["x-stage1-cola"]


def test_cached_reads_history_and_survives_corruption(demo_runs: Path):
    index = RunIndex(demo_runs)
    assert index.cached() == []  # no history yet
    History(demo_runs).rebuild()
    assert len(index.cached()) == 5
    (demo_runs / "history.json").write_text("{not json")
    assert index.cached() == []
    assert len(index.sync_history()) == 5  # rebuilt
    assert len(RunIndex(demo_runs).cached()) == 5


def test_table_filter_and_sort(demo_runs: Path):
    runs = RunIndex(demo_runs).scan()[0]
    assert [s.task for s in runtable.view(runs, "status:failed")] == ["rte"]
    assert [s.task for s in runtable.view(runs, "rte")] == ["rte", "rte"]
    assert len(runtable.view(runs, "stage:stage2 method:dtvg")) == 1
    assert runtable.view(runs, status="completed", sort="task", reverse=False)[0].task == "mnli"
    best = runtable.view(runs, sort="best_metric", reverse=True)
    assert best[0].best_metric == max(s.best_metric for s in runs)
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


def test_follower_reads_in_chunks_and_waits_for_whole_lines(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    lines = [json.dumps({"v": 1, "type": "step", "time": i, "step": i}) for i in range(100)]
    path.write_text("\n".join(lines) + "\n" + '{"v": 1, "type": "st')
    follower = EventFollower(path, chunk_bytes=512)
    seen = []
    while not follower.at_end or not seen:
        got = follower.read()
        if not got:
            break
        seen += got
    assert [e["step"] for e in seen] == list(range(100))
    with open(path, "a") as f:
        f.write('ep", "time": 1, "step": 100}\n')
    assert [e["step"] for e in follower.read()] == [100]


def test_similarity_matrix_is_eq2():
    import numpy as np

    a = np.array([[1.0, 0.0], [1.0, 2.0]])  # token sum (2, 2)
    b = np.array([[0.0, 1.0], [1.0, 0.0]])  # token sum (1, 1)
    m = similarity_matrix([a, b])
    assert m == [[8 / 4, 4 / 4], [4 / 4, 2 / 4]]
    with pytest.raises(UserError):
        similarity_matrix([a, np.zeros((3, 2))])
