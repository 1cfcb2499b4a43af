"""Foreground runs: launch workers (at most J at a time) and follow their event streams with rich.

The foreground path uses the same worker subprocess as `--detach` and the TUI, so a run behaves the
same however it was started. Ctrl-C stops every live worker gracefully (checkpoint, status `stopped`)
and leaves the runs not started yet queued (`pending`, no worker): `dtvg run resume RUN` starts one,
and a rerun pipeline runs them.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dtvg_engine.errors import UserError
from dtvg_engine.runs import launcher, workers
from dtvg_engine.runs.events import EventReader, RunState
from dtvg_engine.runs.runfolder import EVENTS, read_config
from dtvg_engine.runs.runowner import pid_alive
from dtvg_engine.runs.runstatus import planned_steps, summarize

POLL_S = 0.3


class _Followed:
    """One run being watched: its events read so far, folded, and its progress-bar task."""

    def __init__(self, run_dir: Path, progress: Progress) -> None:
        self.run_dir = run_dir
        self.reader = EventReader(run_dir / EVENTS)
        self.reader.skip_existing()  # a resumed run's earlier events (its old finish included) are history
        self.state = RunState()
        """This run's new events, folded."""
        self.pid: int | None = None
        self.slot: dict[str, str] = {}
        """The worker slot's environment (threads, GPU) while it runs."""
        self.finished = False
        config = read_config(run_dir)
        label = config.get("task") or f"{config.get('target')} ← {config.get('method')}"
        self.task_id = progress.add_task(label, total=planned_steps(config), status="queued")

    def poll(self, progress: Progress) -> None:
        for lines in self.reader.chunks():
            if self.reader.restarted:  # truncated or replaced: fold what it holds now
                self.state = RunState()
            self.state.feed_lines(lines)
        state = self.state
        if state.finish is not None:
            self.finished = True
            progress.update(self.task_id, completed=state.step, status=state.finish.status)
        elif state.last_step is not None:
            validation = state.last_eval.get("validation")
            text = f"loss {state.last_step.loss:.3f}"
            if validation is not None and validation.primary is not None:
                text += f"  val {validation.primary:.3f}"
            progress.update(self.task_id, completed=state.step, status=text)
        launcher.reap()  # a worker that died: its exit status is recorded before its status is read
        if not self.finished and self.pid is not None and not pid_alive(self.pid):
            self.finished = True  # died without a word (killed); its summary says "killed"
            progress.update(self.task_id, status=summarize(self.run_dir).status)


def _launch(run: _Followed, progress: Progress, console: Console) -> bool:
    """Start a followed run's worker; False (and why, printed) when the run may not start now."""
    try:
        run.pid = launcher.launch_worker(run.run_dir, env=run.slot)
    except UserError as exc:  # e.g. another process's worker owns it
        console.print(f"{run.run_dir.name} not started: {exc}", markup=False, highlight=False)
        progress.update(run.task_id, status="not started")
        return False
    progress.update(run.task_id, status="starting")
    return True


def _interrupt(live: list[_Followed], queued: list[_Followed], progress: Progress, console: Console) -> None:
    """Ctrl-C: stop the live workers (each checkpoints) and keep the queued runs for `dtvg run resume`."""
    console.print("stopping: each run checkpoints and can be resumed with `dtvg run resume RUN`")
    for run in live:
        launcher.stop_run(run.run_dir)
    try:
        for run in live:
            launcher.wait_for_exit(run.pid, timeout=60)
            run.poll(progress)
    except KeyboardInterrupt:
        console.print("not waiting any longer: the workers finish stopping on their own")
    if queued:
        names = " ".join(run.run_dir.name for run in queued)
        console.print(
            f"not started, kept queued (`dtvg run resume RUN` starts one): {names}", highlight=False
        )


def run_foreground(run_dirs: list[Path], jobs: int | str = 1, console: Console | None = None) -> list[str]:
    """Run the given (already created) runs, `jobs` at a time (a count or `auto`); return their final
    statuses. Each worker runs in a slot with its share of the cores, or its GPU (`workers`)."""
    console = console or Console(stderr=True)
    free = workers.slot_environments(jobs, [read_config(d).get("device", "auto") for d in run_dirs])
    if len(run_dirs) > 1:
        console.print(workers.describe(free), highlight=False)
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
                while queue and free:
                    run = queue.pop(0)
                    run.slot = free.pop(0)
                    if _launch(run, progress, console):
                        live.append(run)
                    else:
                        free.insert(0, run.slot)
                time.sleep(POLL_S)
                for run in live:
                    run.poll(progress)
                    if run.finished:
                        free.append(run.slot)
                live = [run for run in live if not run.finished]
        except KeyboardInterrupt:
            _interrupt(live, queue, progress, console)
    return [summarize(run.run_dir).status for run in followed]
