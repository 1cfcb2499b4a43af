"""Foreground runs: launch workers (at most J at a time) and follow their event streams with rich.

The foreground path uses the same worker subprocess as `--detach` and the TUI, so a run behaves the
same however it was started; Ctrl-C stops every live worker gracefully (checkpoint, status `stopped`).
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dtvg_engine import launcher
from dtvg_engine.events import read_events
from dtvg_engine.runfolder import EVENTS, pid_alive, read_config, summarize

POLL_S = 0.3


class _Followed:
    """One run being watched: where its events were read up to, and its progress-bar task."""

    def __init__(self, run_dir: Path, progress: Progress) -> None:
        self.run_dir = run_dir
        events = run_dir / EVENTS
        self.offset = events.stat().st_size if events.exists() else 0
        """Where reading starts: a resumed run's earlier events (its old finish included) are history."""
        self.pid: int | None = None
        self.finished = False
        config = read_config(run_dir)
        label = config.get("task") or f"{config.get('target')} ← {config.get('method')}"
        self.task_id = progress.add_task(label, total=config["steps"], status="queued")

    def poll(self, progress: Progress) -> None:
        events, self.offset = read_events(self.run_dir / EVENTS, self.offset)
        for event in events:
            if event["type"] == "step":
                progress.update(self.task_id, completed=event["step"], status=f"loss {event['loss']:.3f}")
            elif event["type"] == "eval" and event["split"] == "validation":
                progress.update(self.task_id, status=f"val {event['primary']:.3f}")
            elif event["type"] == "run_finished":
                self.finished = True
                progress.update(self.task_id, status=event["status"])
        if not self.finished and self.pid is not None and not pid_alive(self.pid):
            self.finished = True  # died without a word (killed); its summary says "killed"
            progress.update(self.task_id, status=summarize(self.run_dir).status)


def run_foreground(run_dirs: list[Path], jobs: int = 1, console: Console | None = None) -> list[str]:
    """Run the given (already created) runs, `jobs` at a time; return their final statuses."""
    console = console or Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, console=console) as progress:
        followed = [_Followed(run_dir, progress) for run_dir in run_dirs]
        queue = list(followed)
        live: list[_Followed] = []
        try:
            while queue or live:
                while queue and len(live) < jobs:
                    run = queue.pop(0)
                    run.pid = launcher.launch_worker(run.run_dir)
                    progress.update(run.task_id, status="starting")
                    live.append(run)
                time.sleep(POLL_S)
                for run in live:
                    run.poll(progress)
                live = [run for run in live if not run.finished]
        except KeyboardInterrupt:
            console.print("stopping: each run checkpoints and can be resumed with `dtvg run resume RUN`")
            for run in live:
                launcher.stop_run(run.run_dir)
            for run in live:
                launcher.wait_for_exit(run.pid, timeout=60)
                run.poll(progress)
    return [summarize(run.run_dir).status for run in followed]
