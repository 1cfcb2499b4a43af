"""What the study-view tests share: the recorded study, a copy of its runs, waiting for the view to load."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

RECORDED_STUDY = Path(__file__).resolve().parents[1] / "fixtures" / "study"
"""A tiny-llama study recorded with the real pipeline (`tests/fixtures/record_study.py`)."""

STUDY_FILE = RECORDED_STUDY / "tiny-study.toml"


@pytest.fixture
def study_runs(tmp_path: Path) -> Path:
    """A writable copy of the recorded study's runs directory (the dashboard writes history.json)."""
    if not (RECORDED_STUDY / "runs").is_dir():
        pytest.fail(
            f"recorded study missing at {RECORDED_STUDY}; record it with tests/fixtures/record_study.py"
        )
    runs = tmp_path / "runs"
    shutil.copytree(RECORDED_STUDY / "runs", runs)
    return runs


def relative_study_file() -> Path:
    """The study file as a path relative to the working directory when it is inside it (so that the
    view's title, which shows the path, is the same on every machine)."""
    try:
        return STUDY_FILE.relative_to(Path.cwd())
    except ValueError:
        return STUDY_FILE


async def settle_study(pilot, timeout: float = 20.0, done: int | None = None) -> None:  # noqa: ANN001
    """Wait until the study view shows its data and details (and, if given, `done` finished runs)."""
    from dtvg_tui.screens.study import StudyScreen

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await pilot.pause(0.1)
        screen = pilot.app.screen
        snapshot = getattr(screen, "snapshot", None)
        if isinstance(screen, StudyScreen) and snapshot is not None and screen.details_shown:
            if done is None or snapshot.counts["done"] == done:
                await pilot.pause(0.3)
                await pilot.wait_for_scheduled_animations()
                await pilot.pause(0.2)
                return
    raise AssertionError("the study view did not load in time")
