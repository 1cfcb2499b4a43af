"""Snapshot tests of the main screens on fixed synthetic runs (UTC, times from the events themselves).

Update with `pytest tests/tui/test_snapshots.py --snapshot-update` after checking the report.
"""

from __future__ import annotations

from pathlib import Path

from dtvg_tui.app import DtvgApp

from .conftest import settle

SIZE = (140, 40)


def make_app(runs: Path) -> DtvgApp:
    return DtvgApp(runs, refresh_interval=60, follow_interval=60)


def test_runs_screen(snap_compare, demo_runs: Path):
    assert snap_compare(make_app(demo_runs), terminal_size=SIZE, run_before=settle)


def test_runs_screen_failed_run(snap_compare, demo_runs: Path):
    async def before(pilot):
        await settle(pilot)
        await pilot.press("down")
        await pilot.pause()

    assert snap_compare(make_app(demo_runs), terminal_size=SIZE, run_before=before)


def test_detail_stage2(snap_compare, demo_runs: Path):
    async def before(pilot):
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)

    assert snap_compare(make_app(demo_runs), terminal_size=(160, 45), run_before=before)


def test_inspector(snap_compare, demo_runs: Path):
    async def before(pilot):
        await settle(pilot)
        await pilot.press("i")
        await settle(pilot)
        await pilot.press("home", "right_square_bracket")
        await pilot.pause(0.3)

    assert snap_compare(make_app(demo_runs), terminal_size=SIZE, run_before=before)


def test_compare(snap_compare, demo_runs: Path):
    async def before(pilot):
        await settle(pilot)
        await pilot.press("down", "down", "space", "space", "c")
        await pilot.pause(0.5)

    assert snap_compare(make_app(demo_runs), terminal_size=SIZE, run_before=before)


def test_help(snap_compare, demo_runs: Path):
    async def before(pilot):
        await settle(pilot)
        await pilot.press("question_mark")
        await pilot.pause()

    assert snap_compare(make_app(demo_runs), terminal_size=(120, 50), run_before=before)


# ----- on the runs recorded with the real engine (tests/fixtures/runs) -----


def test_recorded_runs_screen(snap_compare, recorded_runs: Path):
    assert snap_compare(make_app(recorded_runs), terminal_size=SIZE, run_before=settle)


def _open(suffix: str, key: str):
    async def before(pilot):
        await settle(pilot)
        runs = pilot.app.screen
        run_id = next(r for r in runs.shown if r.endswith(suffix))
        runs.query_one("#runs-table").move_cursor(row=runs.shown.index(run_id))
        await pilot.press(key)
        await settle(pilot)
        await pilot.pause(0.5)

    return before


def test_recorded_detail_dtvg(snap_compare, recorded_runs: Path):
    assert snap_compare(
        make_app(recorded_runs), terminal_size=(160, 45), run_before=_open("stage2-rte-dtvg", "enter")
    )


def test_recorded_inspector(snap_compare, recorded_runs: Path):
    assert snap_compare(make_app(recorded_runs), terminal_size=SIZE, run_before=_open("stage2-rte-dtvg", "i"))


def test_recorded_detail_failed(snap_compare, recorded_runs: Path):
    assert snap_compare(make_app(recorded_runs), terminal_size=SIZE, run_before=_open("stage1-cb", "enter"))
