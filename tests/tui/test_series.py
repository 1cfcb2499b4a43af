"""Unit tests of the pure folding logic: downsampling, curves, the group track, run series."""

from __future__ import annotations

import json
import math

import pytest

from dtvg_engine.runs.events import Event, event_from_dict, parse_lines
from dtvg_tui.series import Curve, GroupTrack, RunSeries, downsample


def lines(*events: dict) -> list[bytes]:
    """Events as `events.jsonl` lines of schema v1."""
    return [json.dumps({"v": 1, **e}).encode() for e in events]


def parsed(*events: dict) -> list[Event]:
    """Events as the shared reader reads them (lines it cannot read left out)."""
    return parse_lines(lines(*events))[0]


def test_downsample_keeps_short_series_and_buckets_long_ones():
    assert downsample([1, 2, 3], [0.5, 0.4, 0.3], 10) == ([1.0, 2.0, 3.0], [0.5, 0.4, 0.3])
    xs = list(range(100))
    dx, dy = downsample(xs, [float(x) for x in xs], 10)
    assert len(dx) == 10
    assert dx[0] == 4.5 and dy[-1] == 94.5  # bucket means


def test_downsample_skips_nan():
    dx, dy = downsample([1, 2, 3], [1.0, math.nan, 3.0], 10)
    assert dx == [1.0, 3.0] and dy == [1.0, 3.0]


def test_curve_resume_replaces_the_tail():
    curve = Curve()
    for step in range(1, 6):
        curve.append(step, step * 10)
    curve.append(3, 99)  # the run resumed from its step-2 checkpoint
    assert list(curve.xs) == [1, 2, 3] and list(curve.ys) == [10, 20, 99]


def group(step, ranked, selected, ts=0.5, kc=0.2, scales=None):
    return event_from_dict({
        "v": 1,
        "type": "group",
        "time": 100.0 + step,
        "step": step,
        "ranked": [{"task": t, "sim": s} for t, s in ranked],
        "selected": selected,
        "ts": ts,
        "kc": kc,
        "scales": scales or {t: 1.0 for t in selected},
    })  # fmt: skip


def test_group_track_state_changes_and_membership():
    track = GroupTrack()
    track.add(group(1, [("a", 0.9), ("b", 0.5), ("c", -0.1)], ["a", "b"]))
    track.add(group(2, [("a", 0.9), ("b", 0.4), ("c", -0.1)], ["a", "b"]))
    track.add(group(3, [("b", 0.8), ("a", 0.7), ("c", 0.1)], ["b"], scales={"b": 1.25}))
    track.add(group(4, [("b", 0.8), ("a", 0.7), ("c", 0.1)], ["b", "c"]))
    assert track.sources == ["a", "b", "c"]
    assert track.change_steps() == [1, 3, 4]
    state = track.state(2)
    assert state.step == 3 and state.ranked == [
        ("b", pytest.approx(0.8)),
        ("a", pytest.approx(0.7)),
        ("c", pytest.approx(0.1)),
    ]
    assert state.selected == ["b"] and state.scales == {"b": 1.25}
    assert track.index_at_step(3) == 2 and track.index_at_step(100) == 3 and track.index_at_step(0) == 0
    rows = track.membership(2)
    assert rows == [[1.0, 0.0], [1.0, 1.0], [0.0, 0.5]]
    assert track.membership(10) == [[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 1]]


def test_group_track_ignores_the_targets_own_scale():
    track = GroupTrack()  # the engine reports the target's scale too (here "t"): it is no source
    track.add(group(1, [("a", 0.9), ("b", -0.2)], ["a"], scales={"t": 1.0, "a": 1.1, "b": 0.9}))
    assert track.sources == ["a", "b"]
    assert track.state(0).scales == {"a": pytest.approx(1.1), "b": pytest.approx(0.9)}


def test_group_track_new_source_later_and_resume():
    track = GroupTrack()
    track.add(group(1, [("a", 0.9)], ["a"]))
    track.add(group(2, [("a", 0.9), ("z", 0.3)], ["a", "z"]))
    assert math.isnan(track.sims[1][0])
    assert track.state(0).ranked == [("a", pytest.approx(0.9))]
    track.add(group(2, [("a", 0.9)], []))  # resumed: step 2 again
    assert len(track) == 2 and track.state(1).selected == []
    assert track.change_steps() == [1, 2]


def test_run_series_folds_a_resumed_run():
    events = [
        {
            "type": "run_started",
            "time": 0.0,
            "run_id": "r",
            "stage": "stage2",
            "method": "dtvg",
            "target": "rte",
            "pid": 1,
            "config": {"steps": 4, "primary_metric": "accuracy"},
        },
        {"type": "step", "time": 1.0, "step": 1, "loss": 2.0, "lr": {"prompt": 0.3}, "samples_per_s": 10.0},
        {
            "type": "eval",
            "time": 1.5,
            "step": 1,
            "split": "validation",
            "metrics": {"accuracy": 0.5},
            "primary": 0.5,
            "best": True,
        },
        {"type": "step", "time": 2.0, "step": 2, "loss": 1.5, "lr": {"prompt": 0.2}, "samples_per_s": 12.0},
        {"type": "run_finished", "time": 3.0, "status": "stopped", "summary": {}, "error": None},
        {
            "type": "run_started",
            "time": 10.0,
            "run_id": "r",
            "stage": "stage2",
            "method": "dtvg",
            "target": "rte",
            "pid": 2,
            "config": {"steps": 4},
        },
        {"type": "step", "time": 11.0, "step": 2, "loss": 1.4, "lr": {"prompt": 0.2}, "samples_per_s": 11.0},
        {"type": "log", "time": 11.5, "level": "warning", "message": "slow"},
        {"type": "mystery", "time": 11.6},
        {"type": "step", "time": 12.0, "step": 3, "loss": 1.0, "lr": {"prompt": 0.1}, "samples_per_s": 13.0},
    ]
    events = parsed(*events)
    assert len(events) == 9  # the mystery type is no event
    series = RunSeries()
    series.feed(events[:5])
    assert series.status == "stopped" and series.duration == 3.0 and series.task == "rte"
    series.feed(events[5:])
    assert series.status == "running" and series.segments == 2 and series.pid == 2
    assert list(series.loss.xs) == [1, 2, 3] and list(series.loss.ys) == [2.0, 1.4, 1.0]
    assert series.duration == 5.0 and series.samples_per_s == 13.0 and series.step == 3
    assert series.best is not None and series.best.primary == 0.5
    assert list(series.logs)[-1][1:] == ("warning", "slow")


def test_run_series_is_the_engine_fold_with_columns_on_top():
    from dtvg_engine.runs.events import RunState

    events = parsed(
        {"type": "run_started", "time": 0.0, "run_id": "r", "stage": "stage1", "method": "pt", "task": "rte",
         "pid": 1, "config": {"steps": 2}},
        {"type": "step", "time": 1.0, "step": 1, "loss": 2.0, "lr": {"prompt": 0.3}, "samples_per_s": 10.0},
        {"type": "step", "time": 2.0, "step": "2", "loss": 1.0, "lr": {}, "samples_per_s": 1.0},  # skipped
        # a test eval of a run that never evaluated on validation names no step: no point on a curve
        {"type": "eval", "time": 3.0, "step": None, "split": "test", "metrics": {}, "primary": 0.5,
         "best": False},
        {"type": "run_finished", "time": 4.0, "status": "completed", "summary": {}, "error": None},
    )  # fmt: skip
    series, state = RunSeries(), RunState()
    series.feed(events)
    state.feed(events)
    assert (series.status, series.step, series.duration, series.best_metric, series.started) == (
        state.status, state.step, state.duration, state.best_metric, state.started,
    ) == ("completed", 1, 4.0, None, 0.0)  # fmt: skip
    assert series.last_eval["test"].primary == 0.5 and series.evals == {} and series.task == "rte"
