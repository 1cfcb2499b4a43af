"""Starting and stopping workers: the `python -m dtvg_engine.worker RUN_DIR` subprocesses of detached runs.

A worker runs in its own session (so its process group holds it and every child it spawns, and
closing the terminal or the TUI does not take it down), writes its output to worker.log and its pid
to worker.pid. Standard library only, because the terminal UI imports it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dtvg_engine.runfolder import LOG, PIDFILE, pid_alive, summarize

_POLL_S = 0.05

_children: list[subprocess.Popen[bytes]] = []
"""Workers this process started, kept so each is reaped once it exits (no zombies, no warnings)."""


def _reap() -> None:
    """Collect the exit status of every started worker that has exited."""
    _children[:] = [child for child in _children if child.poll() is None]


def spawn_detached(command: list[str], log_path: str | os.PathLike[str]) -> subprocess.Popen[bytes]:
    """Start `command` in its own session (process group), output appended to `log_path`.

    Kept in `_children` so it is reaped when it exits.
    """
    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
    _children.append(child)
    return child


def launch_worker(run_dir: str | os.PathLike[str], command: list[str] | None = None) -> int:
    """Start the worker for a run folder holding its config.json; return its pid without waiting.

    `command` replaces the worker command line; tests use it to launch a stand-in.
    """
    _reap()
    run_dir = Path(run_dir)
    command = command or [sys.executable, "-m", "dtvg_engine.worker", str(run_dir)]
    worker = spawn_detached(command, run_dir / LOG)
    tmp = run_dir / f".{PIDFILE}.tmp"
    tmp.write_text(f"{worker.pid}\n")
    os.replace(tmp, run_dir / PIDFILE)
    return worker.pid


def _live_pid(run_dir: str | os.PathLike[str]) -> int | None:
    """The pid of the run's worker while the run is pending or running, else None.

    Going through the run's status means a finished run's old pid, maybe reused by now, is never signalled.
    """
    summary = summarize(run_dir)
    if summary.status in ("pending", "running") and pid_alive(summary.pid):
        return summary.pid
    return None


def _signal(pid: int, signum: int) -> bool:
    """Send `signum` to the process group `pid` leads (a launched worker), else to `pid` alone.

    A foreground run shares its group with the shell's job, which must not be signalled.
    """
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def stop_run(run_dir: str | os.PathLike[str]) -> bool:
    """Ask the run's worker to stop (SIGTERM): it checkpoints and finishes "stopped".

    Returns False when the run has no live worker.
    """
    pid = _live_pid(run_dir)
    return pid is not None and _signal(pid, signal.SIGTERM)


def kill_run(run_dir: str | os.PathLike[str]) -> bool:
    """Kill the run's worker and its children at once (SIGKILL); the run shows as "killed".

    Returns False when the run has no live worker.
    """
    pid = _live_pid(run_dir)
    return pid is not None and _signal(pid, signal.SIGKILL)


def wait_for_exit(pid: int, timeout: float) -> bool:
    """Wait up to `timeout` seconds for process `pid` to exit; return whether it did.

    A worker this process started is reaped on the way, so it does not linger as a zombie.
    """
    deadline = time.monotonic() + timeout
    while True:
        _reap()
        if not pid_alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
