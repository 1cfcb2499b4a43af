"""What every `dtvg` command shares: the console, the --runs-dir and --json options."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from dtvg_engine.errors import UserError
from dtvg_engine.runfolder import default_runs_dir

out = Console()

RunsDir = Annotated[Path, typer.Option("--runs-dir", envvar="DTVG_RUNS_DIR", help="Where run folders live.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def runs_root(path: Path | None) -> Path:
    """The runs directory to use (created if missing); `UserError` when it cannot be a folder."""
    path = Path(path or default_runs_dir())
    if path.exists() and not path.is_dir():
        raise UserError(f"runs directory {path} is a file, not a folder; give --runs-dir a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the runs directory {path}: {e.strerror}") from e
    return path


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))
