"""Dashboard test fixtures: a copy of the recorded runs, UTC times, waiting for the app to settle."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

RECORDED = Path(__file__).resolve().parents[1] / "fixtures" / "runs"
"""Runs recorded with the real engine on the tiny model (`tests/fixtures/record.py`)."""


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch):
    """Format times in UTC so that snapshots do not depend on the machine's time zone."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.delenv("DTVG_KEYMAP", raising=False)
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def recorded_runs(tmp_path: Path) -> Path:
    """A writable copy of the recorded runs (the dashboard writes history.json into the runs dir).

    Stage 1 on mnli, qnli, rte and sst2; stage 2 on rte with `dtvg` (a group event every step) and `pt`;
    a stage-1 cb run that failed (loss became nan).
    """
    if not RECORDED.is_dir() or not any(RECORDED.iterdir()):
        pytest.fail(f"recorded fixture runs missing at {RECORDED}; record them with tests/fixtures/record.py")
    runs = tmp_path / "runs"
    shutil.copytree(RECORDED, runs, ignore=shutil.ignore_patterns("history.json", "history.json.lock"))
    return runs


async def settle(pilot, timeout: float = 10.0) -> None:
    """Wait until the Runs screen has scanned the runs directory and no follower is still reading."""
    from dtvg_tui.screens.detail import RunFollowingScreen
    from dtvg_tui.screens.runs import RunsScreen

    app = pilot.app
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await pilot.pause(0.05)
        runs = next((s for s in app.screen_stack if isinstance(s, RunsScreen)), None)
        ready = runs is not None and runs._scanned_once and not runs._scanning
        screen = app.screen
        if isinstance(screen, RunFollowingScreen):
            ready = ready and not screen.reading
        if ready:
            await pilot.pause(0.2)
            await pilot.wait_for_scheduled_animations()
            await pilot.pause(0.2)
            return
    raise AssertionError("the dashboard did not settle in time")


def pytest_collection_modifyitems(items):  # noqa: ANN001
    os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")
