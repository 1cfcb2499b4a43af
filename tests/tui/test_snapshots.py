"""Snapshot tests of the main screens on the runs recorded with the real engine (tests/fixtures/runs).

Times are UTC and come from the recorded events themselves, so the pictures are fixed.
Update with `pytest tests/tui/test_snapshots.py --snapshot-update` after checking the report.
"""

from __future__ import annotations

from pathlib import Path

from dtvg_tui.app import DtvgApp

from .conftest import settle

SIZE = (140, 40)


def make_app(runs: Path) -> DtvgApp:
    return DtvgApp(runs, refresh_interval=60, follow_interval=60)


def _open(suffix: str, *keys: str):
    """Settle, put the cursor on the run whose id ends with `suffix`, press `keys`, settle again."""

    async def before(pilot):
        await settle(pilot)
        runs = pilot.app.screen
        run_id = next(r for r in runs.shown if r.endswith(suffix))
        runs.query_one("#runs-table").move_cursor(row=runs.shown.index(run_id))
        await pilot.pause()
        if keys:
            await pilot.press(*keys)
            await settle(pilot)
            await pilot.pause(0.5)

    return before


def test_runs_screen(snap_compare, recorded_runs: Path):
    """All seven runs, newest first: the cursor on the failed cb run, its error and log below."""
    assert snap_compare(make_app(recorded_runs), terminal_size=SIZE, run_before=settle)


def test_runs_screen_stage2_run(snap_compare, recorded_runs: Path):
    assert snap_compare(make_app(recorded_runs), terminal_size=SIZE, run_before=_open("stage2-rte-dtvg"))


def test_detail_dtvg(snap_compare, recorded_runs: Path):
    assert snap_compare(
        make_app(recorded_runs), terminal_size=(160, 45), run_before=_open("stage2-rte-dtvg", "enter")
    )


def test_detail_stage1(snap_compare, recorded_runs: Path):
    assert snap_compare(make_app(recorded_runs), terminal_size=SIZE, run_before=_open("stage1-sst2", "enter"))


def test_detail_failed(snap_compare, recorded_runs: Path):
    assert snap_compare(make_app(recorded_runs), terminal_size=SIZE, run_before=_open("stage1-cb", "enter"))


def test_inspector(snap_compare, recorded_runs: Path):
    """The inspector at the first group change (step 3: mnli dropped from the group)."""
    assert snap_compare(
        make_app(recorded_runs),
        terminal_size=SIZE,
        run_before=_open("stage2-rte-dtvg", "i", "home", "right_square_bracket"),
    )


def test_compare(snap_compare, recorded_runs: Path):
    """DTVG against plain prompt tuning on rte (only the config keys that differ)."""
    assert snap_compare(
        make_app(recorded_runs), terminal_size=SIZE, run_before=_open("stage2-rte-pt", "space", "space", "c")
    )


def test_help(snap_compare, recorded_runs: Path):
    async def before(pilot):
        await settle(pilot)
        await pilot.press("question_mark")
        await pilot.pause()

    assert snap_compare(make_app(recorded_runs), terminal_size=(120, 50), run_before=before)
