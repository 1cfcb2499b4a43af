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


@pytest.fixture(scope="module")
def llama():
    """The tiny random Llama (one per test module, so no test sees another's changes)."""
    from dtvg_engine.train.backbones import load_backbone

    return load_backbone("tiny-llama", "cpu")


@pytest.fixture(scope="module")
def t5():
    """The tiny random T5, one per test module."""
    from dtvg_engine.train.backbones import load_backbone

    return load_backbone("tiny-t5", "cpu")


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    """An empty runs directory for one test."""
    path = tmp_path / "runs"
    path.mkdir()
    return path
