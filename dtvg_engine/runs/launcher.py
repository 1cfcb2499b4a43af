"""Starting and stopping workers: the `python -m dtvg_engine.worker RUN_DIR` subprocesses of detached runs.

A worker runs in its own session (so its process group holds it and every child it spawns, and
closing the terminal or the TUI does not take it down), writes its output to worker.log and its pid
to worker.pid. Before it starts, the launcher claims the run (`runowner.claim_run`) and hands the claim
to the worker, so at most one worker owns a run folder whoever launches it: the CLI, the TUI or a
pipeline. A run submitted to Slurm is stopped, killed and resumed through its job instead (`slurm`).
Standard library only, because the terminal UI imports it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dtvg_engine.config import check_run_config
from dtvg_engine.errors import UserError
from dtvg_engine.runs import slurm
from dtvg_engine.runs.atomic import write_text_atomic
from dtvg_engine.runs.runactions import refusal
from dtvg_engine.runs.runfolder import CONFIG, LOG, PIDFILE, checkpoint_path, read_config
from dtvg_engine.runs.runowner import (
    WORKER_LOCK_FD,
    claim_run,
    pid_alive,
    record_exit,
    record_owner,
    reserve_space,
    run_owner,
)
from dtvg_engine.runs.runstatus import summarize
from dtvg_engine.runs.safefiles import open_file

_POLL_S = 0.05
_STARTING_S = 1.0
"""How long a stop waits for the pid of a worker that is being launched."""

_children: list[tuple[subprocess.Popen[bytes], Path | None]] = []
"""Processes this process started, each with its run folder (None: not a run's worker), kept so each
is reaped once it exits (no zombies, no warnings) and a run's worker's exit status is recorded."""


def reap() -> None:
    """Collect the exit status of every started process that has exited, and record in its run folder
    how each run's worker ended (`runowner.record_exit`): whoever waits for a worker is the only one
    who learns the signal that killed it. Call it before reading the status of runs this process
    started, so a worker that died shows its reason at once."""
    running = []
    for child, run_dir in _children:
        if child.poll() is None:
            running.append((child, run_dir))
        elif run_dir is not None:
            record_exit(run_dir, child.pid, child.returncode)
    _children[:] = running


def spawn_detached(
    command: list[str],
    log_path: str | os.PathLike[str],
    lock_fd: int | None = None,
    env: dict[str, str] | None = None,
    run_dir: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start `command` in its own session (process group), output appended to `log_path`.

    `lock_fd`, a run's claim, is inherited by the child (its number in `WORKER_LOCK_FD`), so the claim
    lives exactly as long as the worker. `env` is added to this process's environment (a worker slot's
    threads and GPU, `workers.slot_environments`). Kept in `_children` so it is reaped when it exits,
    and its exit status recorded in `run_dir` (a run's worker).
    """
    extra = {**(env or {}), **({WORKER_LOCK_FD: str(lock_fd)} if lock_fd is not None else {})}
    env = {**os.environ, **extra} if extra else None
    with open_file(log_path, "ab") as log:
        child = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
            pass_fds=() if lock_fd is None else (lock_fd,),
            env=env,
        )
    _children.append((child, run_dir))
    return child


def launch_worker(
    run_dir: str | os.PathLike[str], command: list[str] | None = None, env: dict[str, str] | None = None
) -> int:
    """Start the worker for a run folder holding its config.json; return its pid without waiting.

    The run is claimed first and the claim handed to the worker. `UserError`, before anything starts,
    when another worker owns the run, when it may not be (re)started (`runactions.refusal`), when its
    config.json would not pass as a new run's or its checkpoint cannot be loaded safely. `command`
    replaces the worker command line; tests use it to launch a stand-in. `env`: the worker slot's
    environment (see `spawn_detached`).
    """
    reap()
    run_dir = Path(run_dir)
    command = command or [sys.executable, "-m", "dtvg_engine.worker", str(run_dir)]
    lock = claim_run(run_dir)
    try:
        reason = refusal("resume", run_dir.name, summarize(run_dir).status, owner=None)  # we own it now
        if reason:
            raise UserError(reason)
        job_id = slurm.active_job(run_dir)
        if job_id:
            raise UserError(f"run {run_dir.name} is Slurm job {job_id}; stop it first with `dtvg runs stop`")
        check_run_config(read_config(run_dir), run_dir / CONFIG)  # it may have been edited since
        checkpoint_path(run_dir)
        reserve_space(run_dir)  # a full disk is refused here, not met by the worker with no word left
        (run_dir / slurm.JOB_FILE).unlink(missing_ok=True)  # a Slurm run resumed here is a local run now
        worker = spawn_detached(command, run_dir / LOG, lock, env, run_dir)
        record_owner(lock, worker.pid)
        write_text_atomic(run_dir / PIDFILE, f"{worker.pid}\n")
    finally:
        os.close(lock)  # the worker holds the claim from here on
    return worker.pid


def resume_run(run_dir: str | os.PathLike[str]) -> str:
    """Start an unfinished run again where it last ran: a worker here, or a new Slurm job; say which.

    The job is submitted by `python -m dtvg_engine.slurm_submit RUN_DIR`, so the dashboard never
    imports submitit. `UserError` when the run cannot be resumed (see `launch_worker`).
    """
    if slurm.read_job(run_dir) is None:
        return f"worker pid {launch_worker(run_dir)}"
    command = [sys.executable, "-m", "dtvg_engine.slurm_submit", str(run_dir)]
    done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"submitting failed (exit code {done.returncode})"]
        raise UserError(lines[-1].removeprefix("error: "))
    return f"Slurm job {done.stdout.strip()}"


def _live_pid(run_dir: str | os.PathLike[str]) -> int | None:
    """The pid of the worker owning the run (holding its claim), else None.

    Going through the claim, which only a live worker holds, means an old pid, maybe reused by now by
    another process, is never signalled. A worker being launched has its pid recorded in a moment.
    """
    deadline = time.monotonic() + _STARTING_S
    while (pid := run_owner(run_dir)) == 0 and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    return pid if pid and pid_alive(pid) else None


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
    """Ask the run's worker to stop (SIGTERM; a Slurm run's job, `slurm.stop`): it checkpoints and
    finishes "stopped". A suspended worker (SIGSTOP, Ctrl-Z) is continued (SIGCONT) to do so.

    Returns False when the run has no live worker (no job in the queue).
    """
    if slurm.read_job(run_dir) is not None:
        return slurm.stop(run_dir)
    pid = _live_pid(run_dir)
    return pid is not None and _signal(pid, signal.SIGTERM) and _signal(pid, signal.SIGCONT)


def kill_run(run_dir: str | os.PathLike[str]) -> bool:
    """Kill the run's worker and its children at once (SIGKILL; a Slurm run's whole job); the run shows
    as "killed".

    Returns False when the run has no live worker (no job in the queue).
    """
    if slurm.read_job(run_dir) is not None:
        return slurm.kill(run_dir)
    pid = _live_pid(run_dir)
    return pid is not None and _signal(pid, signal.SIGKILL)


def wait_for_exit(pid: int, timeout: float) -> bool:
    """Wait up to `timeout` seconds for process `pid` to exit; return whether it did.

    A worker this process started is reaped on the way, so it does not linger as a zombie.
    """
    deadline = time.monotonic() + timeout
    while True:
        reap()
        if not pid_alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
