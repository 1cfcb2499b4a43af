"""Who owns a run: its worker lock (one worker per run), pids, how its worker ended, its disk reserve.

Standard library only, like the run folder it reads (`runfolder`).
"""

from __future__ import annotations

import fcntl
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dtvg_engine.errors import UserError, no_space
from dtvg_engine.runs.atomic import write_json_atomic
from dtvg_engine.runs.runfolder import EXIT, PIDFILE, RESERVE, WORKER_LOCK
from dtvg_engine.runs.safefiles import PID_LIMIT, FileRefused, open_fd, read_bytes, read_json

RESERVE_BYTES = 256 << 10
"""The space held: far more than the last events, log lines and index update of a run need."""


def pid_alive(pid: int | None) -> bool:
    """Whether process `pid` exists and is not a zombie (an exited child nobody has reaped yet)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, but belongs to another user
    except OSError:
        return False
    return _process_state(pid) != "Z"


def pid_suspended(pid: int | None) -> bool:
    """Whether process `pid` is stopped (SIGSTOP, Ctrl-Z, a debugger): alive, but making no progress
    until it is sent SIGCONT."""
    return isinstance(pid, int) and pid > 0 and _process_state(pid) in ("T", "t")


def _process_state(pid: int) -> str | None:
    """The state letter /proc gives process `pid` ("R", "S", "T", "Z", ...); None without /proc
    (macOS) or once it has gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the state follows the command name, which may hold ")"
    return fields[0] if fields else None


def read_pid(run_dir: str | os.PathLike[str]) -> int | None:
    """The pid in the run's worker.pid, or None when there is no (readable) pidfile."""
    try:
        return int(read_bytes(Path(run_dir) / PIDFILE, PID_LIMIT).strip())
    except (OSError, ValueError):
        return None


def _open_for(path: Path, flags: int, doing: str) -> int:
    """`open_fd` for a file the tool makes in a run folder; a `UserError` saying what could not be done
    (`doing`) when the system refuses it (a refused link or device stays a `FileRefused`)."""
    try:
        return open_fd(path, flags)
    except FileRefused:
        raise
    except OSError as e:
        raise UserError(f"cannot {doing}: {e.strerror} ({path})") from e


@contextmanager
def locked(path: Path, doing: str) -> Iterator[None]:
    """Hold an exclusive `flock` on the lock file `path` (a regular file, created if needed); a
    `UserError` saying what could not be done (`doing`) when it cannot be made."""
    fd = _open_for(path, os.O_RDWR | os.O_CREAT, doing)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ----- one worker per run -----------------------------------------------------------------------------

_CLAIM_TRIES = 20
_CLAIM_WAIT_S = 0.025


def claim_run(run_dir: str | os.PathLike[str]) -> int:
    """Take the run's worker lock and return its descriptor; `UserError` when a worker already owns it.

    The lock is an exclusive `flock` on worker.lock, which the operating system releases when the last
    descriptor of it closes, so also when its worker dies (even by kill -9). The launcher claims a run
    before it starts the worker and hands the descriptor to it (`WORKER_LOCK_FD`); a worker started by
    hand claims the run itself. A moment's contention with `run_owner` is waited out.
    """
    run_dir = Path(run_dir)
    try:
        fd = open_fd(run_dir / WORKER_LOCK, os.O_RDWR | os.O_CREAT)
    except FileRefused:
        raise
    except OSError as e:
        raise UserError(f"cannot lock run {run_dir.name}: {e.strerror} ({run_dir / WORKER_LOCK})") from e
    for _ in range(_CLAIM_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            time.sleep(_CLAIM_WAIT_S)
            continue
        os.ftruncate(fd, 0)  # the previous owner's pid
        return fd
    os.close(fd)
    owner = run_owner(run_dir)
    raise UserError(
        f"run {run_dir.name} already has a worker (pid {owner or '?'}); "
        f"wait for it, or stop it with `dtvg runs stop {run_dir.name}`"
    )


def record_owner(fd: int, pid: int) -> None:
    """Write the pid of the worker holding the claim `fd` into the lock file, for `run_owner`."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{pid}\n".encode(), 0)


WORKER_LOCK_FD = "DTVG_WORKER_LOCK_FD"
"""Environment variable naming the claimed lock descriptor a launched worker inherits."""


def run_owner(run_dir: str | os.PathLike[str]) -> int | None:
    """The pid of the worker owning the run (holding its lock): 0 while it is being launched, None when
    no worker owns it. Only reads, so it works in a read-only runs directory."""
    return lock_owner(Path(run_dir) / WORKER_LOCK)


def lock_owner(path: Path) -> int | None:
    """The pid `record_owner` wrote in the lock file `path` while a process holds it (0 before the pid
    is written), None when none does."""
    try:
        fd = open_fd(path)
    except OSError:
        return None  # never locked (or not by us: we lock a regular file)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        return None
    finally:
        os.close(fd)


def reserve_space(run_dir: str | os.PathLike[str]) -> None:
    """Hold `RESERVE_BYTES` of disk in the run folder (worker.reserve) for its worker, so a disk that
    fills while it runs still has room to record why the run ended (`release_space`).

    `UserError` when the disk is full already: nothing would be recorded, so nothing starts. A
    filesystem that cannot allocate ahead goes without the reserve.
    """
    run_dir = Path(run_dir)
    path = run_dir / RESERVE
    fd = _open_for(path, os.O_WRONLY | os.O_CREAT, f"start run {run_dir.name}")
    try:
        os.posix_fallocate(fd, 0, RESERVE_BYTES)
    except OSError as e:
        if not no_space(e):
            return
        os.unlink(path)
        raise UserError(
            f"cannot start run {run_dir.name}: {e.strerror} in {run_dir.parent}; free some space, then "
            f"`dtvg run resume {run_dir.name}`"
        ) from e
    finally:
        os.close(fd)


def release_space(run_dir: str | os.PathLike[str]) -> None:
    """Give back the space `reserve_space` held (nothing when there is none)."""
    try:
        os.unlink(Path(run_dir) / RESERVE)
    except OSError:
        pass


def record_exit(run_dir: str | os.PathLike[str], pid: int, returncode: int) -> None:
    """Record how the run's worker `pid` ended (a negative `returncode`: the signal that ended it), for
    whoever reads the run later. The worker records its own end; whoever waits for it records it again,
    with what only a waiter learns: a signal that cannot be caught (out of memory, kill -9)."""
    try:
        write_json_atomic(Path(run_dir) / EXIT, {"pid": pid, "returncode": returncode, "time": time.time()})
    except OSError:
        pass  # a full disk or a folder gone: the run shows killed without the reason


def exit_reason(run_dir: str | os.PathLike[str], pid: int | None) -> str:
    """Why the worker `pid` of a run ended before it finished, as far as anyone knows (`record_exit`)."""
    try:
        record = read_json(Path(run_dir) / EXIT, PID_LIMIT * 4)
        recorded = record["pid"] == pid and isinstance(record["returncode"], int)
    except (OSError, ValueError, TypeError, KeyError):
        recorded = False
    who = f"the worker (pid {pid})" if pid else "the worker"
    if not recorded:
        return (
            f"{who} ended before it finished; no exit status was recorded (nothing waited for it), so a "
            "signal it cannot catch ended it (SIGKILL: out of memory, or kill -9) or a crash (see its log)"
        )
    code = record["returncode"]
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        cause = " (out of memory, or kill -9)" if -code == signal.SIGKILL else ""
        return f"{who} was ended by {name}{cause} before it finished"
    return f"{who} exited with code {code} before it finished"
