"""Snapshot tests of the study view on the study recorded with the real pipeline (tests/fixtures/study).

The study is complete, so nothing on screen depends on the clock. Update with
`pytest tests/tui/test_study_snapshots.py --snapshot-update` after checking the report.
"""

from __future__ import annotations

from pathlib import Path

from dtvg_tui.app import DtvgApp

from .study_helpers import relative_study_file, settle_study, study_runs  # noqa: F401 - a fixture

SIZE = (150, 45)


def make_app(runs: Path) -> DtvgApp:
    return DtvgApp(runs, refresh_interval=60, follow_interval=60, study=relative_study_file())


def _view(*keys: str, cell: tuple[str, str] | None = ("rte", "dtvg")):
    """Settle, put the cursor on a (target, method) cell, press `keys`, settle again."""

    async def before(pilot):
        await settle_study(pilot)
        screen = pilot.app.screen
        if cell is not None:
            row, column = screen.spec.targets.index(cell[0]), 1 + screen.spec.methods.index(cell[1])
            screen.query_one("#study-table").move_cursor(row=row, column=column)
            await pilot.pause(0.3)
        if keys:
            await pilot.press(*keys)
            await pilot.pause(0.5)

    return before


def test_study_results(snap_compare, study_runs: Path):  # noqa: F811
    """The table (best cell per target starred, constant floor, averages) and rte's bars."""
    assert snap_compare(make_app(study_runs), terminal_size=SIZE, run_before=_view())


def test_study_results_second_target(snap_compare, study_runs: Path):  # noqa: F811
    """The bars follow the cursor: mrpc's methods."""
    assert snap_compare(make_app(study_runs), terminal_size=SIZE, run_before=_view(cell=("mrpc", "pt")))


def test_study_stage1(snap_compare, study_runs: Path):  # noqa: F811
    assert snap_compare(make_app(study_runs), terminal_size=SIZE, run_before=_view("2"))


def test_study_similarity(snap_compare, study_runs: Path):  # noqa: F811
    assert snap_compare(make_app(study_runs), terminal_size=SIZE, run_before=_view("3"))


def test_study_groups(snap_compare, study_runs: Path):  # noqa: F811
    assert snap_compare(make_app(study_runs), terminal_size=SIZE, run_before=_view("4"))


def test_study_cell_runs(snap_compare, study_runs: Path):  # noqa: F811
    """Enter on rte × dtvg: its two seeds' runs."""
    assert snap_compare(make_app(study_runs), terminal_size=SIZE, run_before=_view("enter"))
