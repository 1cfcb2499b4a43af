"""Helpers of the dashboard tests: the screen as plain text, and runs derived from the recorded ones.

Everything a test needs beyond the recordings (a live run, a killed one, a stopped one) is made from a
recorded run: its config and artifacts copied, its events replayed through the engine's own
`EventWriter` (as a live worker writes them) or cut short (as a worker that died leaves them).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from rich.console import Console
from textual.app import App

from dtvg_engine.runs.events import EventWriter, event_from_dict
from dtvg_engine.runs.runfolder import CONFIG, EVENTS, PIDFILE


def screen_text(app: App) -> str:
    """What the terminal shows now, as plain text (one line per row)."""
    width, height = app.size
    console = Console(
        width=width,
        height=height,
        file=io.StringIO(),
        force_terminal=True,
        color_system="truecolor",
        record=True,
        legacy_windows=False,
        safe_box=False,
    )
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text()


def sync(test):  # noqa: ANN001, ANN201
    """Run an async test function with asyncio (no pytest async plugin needed)."""
    import asyncio
    import functools

    @functools.wraps(test)
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        asyncio.run(test(*args, **kwargs))

    return wrapper


# ----- runs made from the recorded ones -----


def run_id(runs: Path, suffix: str) -> str:
    """The id of the (only) run in `runs` whose id ends with `suffix`, e.g. "stage2-rte-dtvg"."""
    (match,) = [p.name for p in Path(runs).iterdir() if p.name.endswith(suffix)]
    return match


def recorded_events(run_dir: Path) -> list[dict[str, Any]]:
    """A run's events exactly as written (every line of its events.jsonl)."""
    return [json.loads(line) for line in (Path(run_dir) / EVENTS).read_text().splitlines() if line]


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped: what a killed worker leaves behind."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def clone_run(runs: Path, suffix: str, new_id: str) -> tuple[Path, list[dict[str, Any]]]:
    """Copy the recorded run `…suffix` to `runs/new_id` without its events and pidfile.

    Returns the new folder and the recorded events, for the caller to write (all, some, or replayed).
    """
    source = Path(runs) / run_id(runs, suffix)
    target = Path(runs) / new_id
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(EVENTS, PIDFILE))
    config = json.loads((target / CONFIG).read_text())
    (target / CONFIG).write_text(json.dumps({**config, "run_id": new_id}, indent=2))
    return target, recorded_events(source)


def write_events(run_dir: Path, events: list[dict[str, Any]], pid: int | None = None) -> None:
    """Write recorded events verbatim (times included), the run_started one renamed to this run."""
    with open(Path(run_dir) / EVENTS, "a", encoding="utf-8") as f:
        for event in events:
            if event["type"] == "run_started":
                event = {**event, "run_id": Path(run_dir).name, **({"pid": pid} if pid else {})}
            f.write(json.dumps(event, separators=(",", ":")) + "\n")


def replay(writer: EventWriter, events: list[dict[str, Any]], pid: int | None = None) -> None:
    """Emit recorded events through a real `EventWriter`, now, as the worker would (time = now)."""
    for event in events:
        if event["type"] == "run_started":
            event = {**event, "run_id": writer.path.parent.name, **({"pid": pid} if pid else {})}
        writer.emit(event_from_dict(event))


def split_at_step(events: list[dict[str, Any]], step: int) -> int:
    """The index just after the `step` event of `step` (and what the worker wrote with it)."""
    index = next(i for i, e in enumerate(events) if e["type"] == "step" and e["step"] == step)
    index += 1
    while index < len(events) and events[index]["type"] not in ("step", "run_finished"):
        if events[index].get("step", step) != step:
            break
        index += 1
    return index


# ----- real workers -----


async def wait_until(pilot, check, timeout: float, what: str, interval: float = 0.25):  # noqa: ANN001, ANN201
    """Let the app run until `check()` returns something truthy (returned); fail after `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await pilot.pause(interval)
        result = check()
        if result:
            return result
    raise AssertionError(f"not {what} within {timeout} s")


def group_members(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes of process group `pgid`, read from /proc."""
    members = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, pgrp, …
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(proc.name))
    return members


def kill_group(pgid: int | None) -> None:
    """SIGKILL process group `pgid` if anything of it is left (cleanup of a test's workers)."""
    import os
    import signal

    if pgid:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass


def worker_log(run_dir: Path) -> str:
    """The tail of a run's worker.log, for failure messages."""
    log = Path(run_dir) / "worker.log"
    return log.read_text(errors="replace")[-3000:] if log.is_file() else "(no worker.log)"
