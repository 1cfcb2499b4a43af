"""What the CLI tests check of every refused input, in one place."""

from __future__ import annotations

import subprocess


def assert_bad_input(result: subprocess.CompletedProcess[str]) -> str:
    """Exit code 2 and exactly one line on stderr starting with "error:"; returns that line."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]
