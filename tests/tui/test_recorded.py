"""The dashboard on runs recorded with the real engine (tiny Llama): tests/fixtures/runs/.

Stage 1 on mnli, qnli, rte, sst2; stage 2 rte with dtvg (group events) and pt; a stage-1 cb run that failed.
"""

from __future__ import annotations

from pathlib import Path

from dtvg_engine.runs.runstatus import summarize
from dtvg_tui.app import DtvgApp
from dtvg_tui.runindex import RunIndex
from dtvg_tui.screens.compare import CompareScreen
from dtvg_tui.screens.detail import RunDetailScreen
from dtvg_tui.screens.inspector import InspectorScreen

from .conftest import settle
from .helpers import screen_text, sync

SIZE = (160, 45)


def find(runs: Path, suffix: str) -> str:
    return next(p.name for p in runs.iterdir() if p.name.endswith(suffix))


def test_index_matches_the_engine(recorded_runs: Path):
    changed, _ = RunIndex(recorded_runs).scan()
    assert len(changed) == 7
    for summary in changed:
        assert summary == summarize(summary.run_dir)
    statuses = {s.run_id.split("-", 2)[2]: s.status for s in changed}
    assert statuses["stage1-cb"] == "failed" and statuses["stage2-rte-dtvg"] == "completed"


@sync
async def test_screens_on_recorded_runs(recorded_runs: Path):
    app = DtvgApp(recorded_runs, refresh_interval=0.3, follow_interval=0.1)
    dtvg = find(recorded_runs, "stage2-rte-dtvg")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        runs = app.screen
        assert len(runs.shown) == 7
        await pilot.press("slash", *"status:failed", "enter")
        assert "loss became nan at step 3" in screen_text(app)
        await pilot.press("escape")
        runs.query_one("#runs-table").move_cursor(row=runs.shown.index(dtvg))
        await pilot.press("enter")
        await settle(pilot)
        detail = app.screen
        assert isinstance(detail, RunDetailScreen)
        assert len(detail.series.group) == 16 and detail.series.stage == "stage2"
        assert detail.series.group.sources == ["qnli", "sst2", "mnli"]  # not the target rte
        text = screen_text(app)
        assert "Group at step" in text and "TS" in text and "Group timeline" in text
        await pilot.press("i")
        await settle(pilot)
        inspector = app.screen
        assert isinstance(inspector, InspectorScreen)
        await pilot.pause(0.5)
        text = screen_text(app)
        assert "Task similarity" in text and "rte" in text and "mnli" in text
        await pilot.press("home", "end", "left_square_bracket")
        await pilot.press("escape", "escape")
        await pilot.press("space")
        runs.query_one("#runs-table").move_cursor(row=runs.shown.index(find(recorded_runs, "stage2-rte-pt")))
        await pilot.press("space", "c")
        await pilot.pause(0.5)
        assert isinstance(app.screen, CompareScreen) and len(app.screen.series) == 2
