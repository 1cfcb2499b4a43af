"""The dashboard never imports torch, transformers, peft or datasets, and `dtvg-tui --help` works."""

from __future__ import annotations

import re
import subprocess
import sys

MODULES = [
    "dtvg_tui.app",
    "dtvg_tui.screens.runs",
    "dtvg_tui.screens.detail",
    "dtvg_tui.screens.inspector",
    "dtvg_tui.screens.compare",
    "dtvg_tui.screens.new_run",
    "dtvg_tui.screens.help",
    "dtvg_tui.similarity",
    "dtvg_tui.widgets.heatmap",
]


def test_no_heavy_imports():
    code = "; ".join(f"import {m}" for m in MODULES)
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True
    )
    heavy = re.findall(r"\|\s+(torch|transformers|peft|datasets)$", result.stderr, flags=re.M)
    assert heavy == [], f"dtvg_tui imports {sorted(set(heavy))}"


def test_entry_point_help():
    result = subprocess.run(
        [sys.executable, "-c", "from dtvg_tui.app import main; main(['--help'])"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and "--runs-dir" in result.stdout


def test_bad_keymap_exits_2(tmp_path, monkeypatch):
    bad = tmp_path / "keymap.json"
    bad.write_text('{"no.such.binding": "x"}')
    result = subprocess.run(
        [sys.executable, "-c", "from dtvg_tui.app import main; main([])"],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "DTVG_KEYMAP": str(bad)},
    )
    assert result.returncode == 2 and "unknown binding id" in result.stderr
