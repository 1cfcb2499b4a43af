"""What every `dtvg` command shares: the console, the --runs-dir and --json options."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from dtvg_engine.runfolder import default_runs_dir

out = Console()

RunsDir = Annotated[Path, typer.Option("--runs-dir", envvar="DTVG_RUNS_DIR", help="Where run folders live.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def runs_root(path: Path | None) -> Path:
    """The runs directory to use (created if missing)."""
    path = Path(path or default_runs_dir())
    path.mkdir(parents=True, exist_ok=True)
    return path


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))
