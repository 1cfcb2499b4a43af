"""`dtvg`: the headless command line (docs/architecture.md, 'Commands').

Exit codes: 0 ok, 1 a run failed, 2 bad input. Bad input is a `UserError`, printed as one line.
Heavy imports (torch, transformers) happen inside the commands that need them, so listing runs is quick.
One module per command group: `run` (and `demo`), `runs`, `tpv`, `tasks`.
"""

from __future__ import annotations

import sys

import typer

from dtvg_engine.cli.run import demo, run_app
from dtvg_engine.cli.runs import runs_app
from dtvg_engine.cli.tasks import tasks_app
from dtvg_engine.cli.tpv import tpv_app
from dtvg_engine.errors import UserError, no_space
from dtvg_engine.runs.runmeta import printable

app = typer.Typer(
    help="DTVG Studio: multi-task soft-prompt transfer, headless.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(run_app, name="run")
app.add_typer(runs_app, name="runs")
app.add_typer(tpv_app, name="tpv")
app.add_typer(tasks_app, name="tasks")
app.command("demo")(demo)


def main() -> None:
    """Entry point: bad input, and a disk found full, become one line on stderr and exit code 2, never a
    traceback."""
    try:
        app()
    except UserError as exc:
        print(f"error: {printable(str(exc))}", file=sys.stderr)  # it may quote a hostile name
        sys.exit(2)
    except OSError as exc:
        if not no_space(exc):
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror}{where}; free some space and try again", file=sys.stderr)
        sys.exit(2)
