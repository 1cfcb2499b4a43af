"""Shared fixtures: where the real task data lives, and a fresh runs directory per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DTVG_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real GLUE/SuperGLUE copies in ../shared/data (read-only)."""
    assert SHARED_DATA.is_dir(), f"shared data not found at {SHARED_DATA}; set DTVG_TEST_DATA"
    return SHARED_DATA


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    """An empty runs directory for one test."""
    path = tmp_path / "runs"
    path.mkdir()
    return path
