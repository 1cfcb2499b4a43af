"""What every `dtvg` command shares: the console, the --runs-dir and --json options, and the options of
the run settings, each derived from its field in `config` (docs/architecture.md, 'Settings')."""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from dtvg_engine import config as configs
from dtvg_engine.errors import UserError
from dtvg_engine.runs.runfolder import default_runs_dir
from dtvg_engine.train.tasks import TASKS_ENV

out = Console()

RunsDir = Annotated[Path, typer.Option("--runs-dir", envvar="DTVG_RUNS_DIR", help="Where run folders live.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
TaskFile = Annotated[
    Path | None,
    typer.Option(
        "--tasks",
        envvar=TASKS_ENV,
        help="A task file (TOML) defining your own tasks, as `dtvg tasks show NAME` prints them.",
    ),
]


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


def setting_option(key: str) -> tuple[Any, Any]:
    """The command-line option of setting `key`: its annotated type and its default, from its field.

    A setting whose default depends on the model (`config.SWEPT_KEYS`) defaults to None here, so that
    the run config takes the model's; a path is a `Path`.
    """
    setting = configs.SETTINGS_BY_KEY[key]
    rule = setting.metadata["rule"]
    if rule is None:  # the method, checked against the method registry
        kind: type = str
    else:
        kind = Path if rule == configs.PATH else rule.kind
    swept = key in configs.SWEPT_KEYS
    help = setting.metadata["help"] + (" Default: the model's (see README)." if swept else "")
    option = typer.Option(configs.cli_flag(key), help=help, envvar=setting.metadata.get("envvar"))
    optional = swept or setting.default is None
    return Annotated[kind | None if optional else kind, option], None if swept else setting.default


def with_options(
    gathered: str,
    options: dict[str, tuple[Any, Any]],
    gather: Callable[[dict[str, Any]], Any],
    before: str | None = None,
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command the `options` (parameter name → annotated type and default), placed before its
    parameter `before` (else after all of them), and call it with their values as one argument,
    `gathered` = `gather(values)`.

    Typer reads a command's options from its signature, so the command's own signature is extended with
    one parameter per option; an option left out of a direct call takes its default."""

    def wrap(command: Callable[..., None]) -> Callable[..., None]:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != gathered]
        added = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
            for name, (annotation, default) in options.items()
        ]
        at = next((i for i, p in enumerate(own) if p.name == before), len(own))
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[:at] + added + own[at:]]

        @functools.wraps(command)
        def run(**values: Any) -> None:
            mine = {name: values.pop(name, default) for name, (_, default) in options.items()}
            command(**values, **{gathered: gather(mine)})

        run.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
        return run

    return wrap


def with_settings(*keys: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command one option per setting in `keys` (`setting_option`), placed before its
    --runs-dir, and call it with their values as one `settings` dict keyed as config.json is."""
    keys_by_name = {configs.SETTINGS_BY_KEY[key].name: key for key in keys}
    return with_options(
        "settings",
        {name: setting_option(key) for name, key in keys_by_name.items()},
        lambda values: {keys_by_name[name]: value for name, value in values.items()},
        before="runs_dir",
    )
