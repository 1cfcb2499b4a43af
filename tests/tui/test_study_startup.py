"""The study view imports no ML stack (nor numpy), and `dtvg-tui --study` refuses a bad file in one line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

MODULES = ["dtvg_tui.app", "dtvg_tui.screens.study", "dtvg_tui.studydata", "dtvg_tui.widgets.score_bars"]


def test_the_study_view_imports_no_ml_stack_and_no_numpy():
    code = "; ".join(f"import {m}" for m in MODULES)
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True
    )
    heavy = re.findall(r"\|\s+(torch|transformers|peft|datasets|numpy)$", result.stderr, flags=re.M)
    assert heavy == [], f"the study view imports {sorted(set(heavy))}"


def run_tui(*args: str) -> subprocess.CompletedProcess:
    code = f"from dtvg_tui.app import main; main({list(args)!r})"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_a_bad_study_file_exits_2_with_one_line(tmp_path: Path):
    missing = run_tui("--runs-dir", str(tmp_path), "--study", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "nope.toml does not exist" in missing.stderr and "Traceback" not in missing.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nsources = ["mnli"]\ntargets = ["rte"]\nmethods = ["no-such-method"]\n')
    refused = run_tui("--runs-dir", str(tmp_path), "--study", str(bad))
    assert refused.returncode == 2 and "no-such-method" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_help_names_the_study_option():
    assert "--study" in run_tui("--help").stdout
