"""`dtvg tasks list / show`: every task a run can use, built in or from a task file."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from dtvg_engine.cli.common import JsonFlag, TaskFile, out, print_json
from dtvg_engine.train import tasks

tasks_app = typer.Typer(help="The tasks runs can use: built in, or from a task file.", no_args_is_help=True)


def _row(task: tasks.Task) -> dict[str, object]:
    """A task's summary: its name, where it comes from, and its definition as a task file writes it."""
    return {"name": task.name, "origin": task.origin, **tasks.definition(task)}


@tasks_app.command("list")
def tasks_list(task_file: TaskFile = None, as_json: JsonFlag = False) -> None:
    """Every task: its kind, fields, label words, metrics and data."""
    tasks.use_file(task_file)
    rows = [_row(task) for task in tasks.all_tasks().values()]
    if as_json:
        print_json(rows)
        return
    table = Table("task", "kind", "fields", "label words", "metrics", "data", "from", title="tasks")
    for task, row in zip(tasks.all_tasks().values(), rows, strict=True):
        words = ",".join(word.strip() for word in task.label_words) or f"target: {task.target_field}"
        table.add_row(
            task.name, task.kind, ", ".join(task.text_fields), words, ", ".join(task.metrics),
            str(row["data"]), task.origin,
        )  # fmt: skip
    out.print(table)


@tasks_app.command("show")
def tasks_show(
    name: Annotated[str, typer.Argument(help="A task name (see `dtvg tasks list`).")],
    task_file: TaskFile = None,
    as_json: JsonFlag = False,
) -> None:
    """One task's definition, as a `[tasks.NAME]` table to copy into your own task file."""
    tasks.use_file(task_file)
    task = tasks.get_task(name)
    if as_json:
        print_json(_row(task))
        return
    print(f"# {task.origin}")
    print(f"[tasks.{task.name}]")
    for key, value in tasks.definition(task).items():
        print(f"{key} = {_toml(value)}")


def _toml(value: object) -> str:
    """A value as TOML writes it (strings, booleans, integers, lists and inline tables of them)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    return str(value)


def _key(key: str) -> str:
    """A bare TOML key when it is one, else a quoted one."""
    return key if key.replace("_", "").replace("-", "").isalnum() and key.isascii() else _toml(key)
