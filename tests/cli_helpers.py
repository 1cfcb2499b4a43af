"""What the CLI tests check of every refused input, in one place."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def assert_bad_input(result: subprocess.CompletedProcess[str]) -> str:
    """Exit code 2 and exactly one line on stderr starting with "error:"; returns that line."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


_VENV_DTVG = Path(sys.executable).with_name("dtvg")
DTVG = str(_VENV_DTVG) if _VENV_DTVG.exists() else "dtvg"


def dtvg(
    *args: object, timeout: float = 300, env: Mapping[str, str] | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run the real `dtvg` command (the venv's) with `args`, `env` added to this process's environment;
    `kwargs` go to `subprocess.run`."""
    return subprocess.run(
        [DTVG, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        **kwargs,
    )
