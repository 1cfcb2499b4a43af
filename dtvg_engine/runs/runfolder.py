"""The run folder: creating runs, finding them and summarizing what their files say.

The contract: docs/architecture.md, 'Run folder'.

A run folder is the source of truth for one run; everything here derives from its files. Standard
library only, because the terminal UI imports it and must start in well under a second.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from dtvg_engine.errors import UserError, no_space
from dtvg_engine.runs import slurm
from dtvg_engine.runs.atomic import (  # noqa: F401 (replacing, write_text_atomic: still imported from here)
    replacing,
    write_json_atomic,
    write_text_atomic,
)
from dtvg_engine.runs.events import TERMINAL_STATUSES, RunState, read_state
from dtvg_engine.runs.safefiles import (
    PID_LIMIT,
    FileRefused,
    open_fd,
    open_file,
    parse_json,
    read_bytes,
    read_json,
    real_dir,
)

CONFIG = "config.json"
EVENTS = "events.jsonl"
LOG = "worker.log"
PROMPT = "prompt.safetensors"
TPV = "tpv.safetensors"
PREDICTIONS = "predictions.jsonl"
"""A generation run's generated texts: the latest validation generations while the run trains, the test
generations at the chosen checkpoint once it has finished."""
ADAPTER = "adapter"
CHECKPOINT = "checkpoint"
CHECKPOINT_FILE = "state.safetensors"
"""The resume state inside CHECKPOINT: tensors, plus the rest as JSON in the header (`training`)."""
OLD_CHECKPOINT_FILE = "state.pt"
"""The pickled checkpoint of versions before 0.2: never loaded, since unpickling can run any code."""
CHECKPOINT_FORMAT = "dtvg-checkpoint-1"
"""The `format` a checkpoint's header metadata names; anything else is refused."""
META = "meta.json"
"""User annotations (tags, note): kept in the run folder so the history stays derivable."""
META_LOCK = "meta.json.lock"
"""Held (flock) around every read-modify-write of meta.json, so parallel tag/note commands lose nothing."""
PIDFILE = "worker.pid"
"""The launched worker's pid, written by the launcher so a run can be stopped before its first event."""
WORKER_LOCK = "worker.lock"
"""Held (flock) by the run's worker for its whole life, from launch on; holds its pid. One worker per run."""
EXIT = "worker.exit"
"""How the last worker that someone waited for ended: its pid and exit status (`record_exit`)."""
RESERVE = "worker.reserve"
"""Disk space a worker holds while it runs (`reserve_space`), freed to record its end on a full disk."""
RESERVE_BYTES = 256 << 10
"""The space held: far more than the last events, log lines and index update of a run need."""
INITS_DIR = "_inits"
"""Shared initializations, `runs/_inits/<model-slug>-r<length>-s<seed>.safetensors`."""

STATUSES = ("pending", "running", "suspended", "completed", "failed", "stopped", "killed")
"""Every status `summarize` reports: the three `run_finished` statuses plus four derived ones."""
LIVE_STATUSES = ("pending", "running", "suspended")
"""Statuses of a run a worker owns (or, pending, may own in a moment): its status can change unseen."""

_LOG_TAIL_BYTES = 256 * 1024


def default_runs_dir() -> Path:
    """`$DTVG_RUNS_DIR`, else `./runs`."""
    return Path(os.environ.get("DTVG_RUNS_DIR") or "runs")


def _safe(text: str) -> str:
    """Lowercase `text` and replace every run of characters outside [a-z0-9._-] by one "-"."""
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-") or "run"


def new_run_id(stage: str, label: str, now: datetime | None = None) -> str:
    """`<YYYYmmdd-HHMMSS>-<stage>-<label>`, filesystem-safe."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{_safe(stage)}-{_safe(label)}"


def create_run(runs_dir: str | os.PathLike[str], stage: str, label: str, config: dict[str, Any]) -> Path:
    """Create a new run folder holding `config` (plus its `run_id`) as config.json; return its path.

    The folder is created exclusively: when the id is taken (two runs in the same second), "-2", "-3", …
    is appended. The caller's dict is not modified; read the id back from the folder name.
    """
    runs_dir = Path(runs_dir)
    base = new_run_id(stage, label)
    run_id, n = base, 1
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        while True:
            run_dir = runs_dir / run_id
            try:
                run_dir.mkdir()
                break
            except FileExistsError:
                n += 1
                run_id = f"{base}-{n}"
    except OSError as e:
        raise UserError(f"cannot create a run in {runs_dir}/: {e.strerror}") from e
    resolved = {"run_id": run_id, **{k: v for k, v in config.items() if k != "run_id"}}
    try:
        write_json_atomic(run_dir / CONFIG, resolved)
    except OSError as e:  # a disk found full: no folder without a config is left, which no command finds
        shutil.rmtree(run_dir, ignore_errors=True)
        raise UserError(
            f"cannot create run {run_id} in {runs_dir}/: {e.strerror}; free some space and try again"
        ) from e
    return run_dir


def create_runs(
    runs_dir: str | os.PathLike[str], stage: str, planned: Sequence[tuple[str, dict[str, Any]]]
) -> list[Path]:
    """`create_run` for each (label, config) of `planned`: all of them or, on an error (a full disk),
    none, so a command that fails leaves no half of what it asked for."""
    made: list[Path] = []
    try:
        for label, config in planned:
            made.append(create_run(runs_dir, stage, label, config))
    except BaseException:
        for run_dir in made:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return made


def read_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The run's config.json; `UserError` when it is missing, unreadable or not a regular file."""
    path = Path(run_dir) / CONFIG
    try:
        config = read_json(path)
    except FileRefused:
        raise
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror}); is this a run folder?") from e
    except ValueError as e:  # not JSON, not UTF-8, nested too deeply
        raise UserError(f"cannot read {path} ({e}); is this a run folder?") from e
    if not isinstance(config, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return config


def list_run_dirs(runs_dir: str | os.PathLike[str]) -> list[Path]:
    """Run folders (real folders holding a config.json) sorted by name, i.e. by start time.

    Names starting with "_" or "." (shared inits, temp folders) are not runs, and neither are symbolic
    links: a run folder lives inside its runs directory (`find_run`).
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    return sorted(p for p in runs_dir.iterdir() if _is_run_name(p.name) and _is_run_dir(p))


def _is_run_name(name: str) -> bool:
    return name not in ("", ".", "..") and name[:1] not in ("_", ".")


def _is_run_dir(path: Path) -> bool:
    """A real folder holding a config.json (of any kind: one that cannot be read is a damaged run)."""
    return not path.is_symlink() and os.path.lexists(path / CONFIG)


def find_run(runs_dir: str | os.PathLike[str], ref: str) -> Path:
    """The run folder `ref` names inside `runs_dir`: an exact id, else the one id containing `ref`.

    A path is accepted when it names a folder directly inside `runs_dir` (as tab completion gives
    `runs/<id>/`). Anything else is refused with a `UserError`: a path elsewhere, "..", a symbolic link
    (its target may be anywhere; `dtvg runs rm` removes the link alone, see `find_link`), no run or
    several runs matching.
    """
    root = Path(runs_dir)
    name = _name_inside(root, ref)
    exact = root / name
    if exact.is_symlink():
        raise UserError(
            f"{exact} is a symbolic link to {os.readlink(exact)}; runs are real folders inside {root}/ "
            f"(`dtvg runs rm {name}` removes the link alone)"
        )
    if _is_run_name(name) and _is_run_dir(exact):
        return exact
    matches = [p for p in list_run_dirs(root) if name == ref and ref in p.name]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UserError(f"no run matching {ref!r} in {root}/; see `dtvg runs list`")
    names = ", ".join(p.name for p in matches[:5]) + (", …" if len(matches) > 5 else "")
    raise UserError(f"{ref!r} matches {len(matches)} runs: {names}; give more of the id")


def missing_stage1_runs(runs_dir: str | os.PathLike[str], config: dict[str, Any]) -> dict[str, str]:
    """Task → id of each stage-1 run a stage-2 run's `config` transfers from (its `stage1_runs`) that
    the runs directory no longer holds (removed, or never copied along)."""
    named = config.get("stage1_runs")
    if not isinstance(named, dict):
        return {}
    return {
        str(task): str(run_id)
        for task, run_id in named.items()
        if not (_is_run_name(str(run_id)) and _is_run_dir(Path(runs_dir) / str(run_id)))
    }


def stage1_dependents(runs_dir: str | os.PathLike[str], run_id: str) -> list[str]:
    """The runs that transfer from the stage-1 run `run_id` (name it in their `stage1_runs`)."""
    found = []
    for run_dir in list_run_dirs(runs_dir):
        try:
            named = read_config(run_dir).get("stage1_runs")
        except UserError:
            continue  # a damaged folder depends on nothing anyone can use
        if isinstance(named, dict) and run_id in named.values():
            found.append(run_dir.name)
    return found


def find_link(runs_dir: str | os.PathLike[str], ref: str) -> Path | None:
    """The symbolic link `ref` names directly inside `runs_dir`, or None when it names no link."""
    link = Path(runs_dir) / _name_inside(Path(runs_dir), ref)
    return link if link.is_symlink() else None


def _name_inside(root: Path, ref: str) -> str:
    """The name of the entry of `root` that `ref` (a name, or a path) names; `UserError` for any other.

    A path must resolve (its folder, symbolic links followed) to `root` itself: "../x", "/elsewhere/x",
    "..", "." and "runs/x/../y" name nothing inside the runs directory.
    """
    path = Path(ref)
    if not ref.strip() or path.name in ("", ".", ".."):
        raise UserError(f"{ref!r} is not a run id; see `dtvg runs list`")
    if path.name == ref:
        return ref
    if os.path.realpath(path.parent) != os.path.realpath(root) or ".." in path.parts:
        raise UserError(
            f"{ref} is not inside the runs directory {root}/; give a run id from `dtvg runs list`"
        )
    return path.name


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


def read_meta(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The run's user annotations `{"tags": [...], "note": "..."}`; empty ones when there is no meta.json.

    Bytes that are not UTF-8 read as U+FFFD, so a damaged note costs those characters, not the note.
    """
    try:
        meta = parse_json(read_bytes(Path(run_dir) / META).decode("utf-8", errors="replace"))
    except (OSError, ValueError):
        meta = {}
    if not isinstance(meta, dict):
        meta = {}
    tags = meta.get("tags")
    note = meta.get("note")
    return {
        "tags": [clean_text(str(t)) for t in tags] if isinstance(tags, list) else [],
        "note": clean_text(note) if isinstance(note, str) else "",
    }


def clean_text(text: str) -> str:
    """`text` as valid Unicode: stray bytes (lone surrogates, as a non-UTF-8 argv gives) become U+FFFD."""
    try:
        raw = text.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        raw = text.encode("utf-8", errors="replace")
    return raw.decode("utf-8", errors="replace")


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""The characters a terminal acts on rather than shows (ESC, BEL, CR, the C1 set...), newline and tab
aside."""


def printable(text: str) -> str:
    """`text` with the control characters a terminal acts on written out as escapes ("\\x1b"): a tag, a
    note, a log line or a run folder's name made by someone else is shown as text, and cannot move the
    cursor, retitle the window or hide what follows it."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def check_tag(tag: str) -> None:
    """Refuse a tag no listing could show or `dtvg runs tag` remove: empty, or starting with "-"."""
    if not tag.strip():
        raise UserError("a tag may not be empty")
    if tag.startswith("-"):
        raise UserError(f"tag {tag!r} starts with '-', which `dtvg runs tag` reads as removing a tag")


def update_meta(
    run_dir: str | os.PathLike[str],
    *,
    tags: list[str] | None = None,
    add_tags: Sequence[str] = (),
    remove_tags: Sequence[str] = (),
    note: str | None = None,
) -> dict[str, Any]:
    """Change the run's annotations and return the new ones.

    `tags` replaces the tags; `remove_tags` then `add_tags` edit them; `note` replaces the note (None
    leaves it). The read-modify-write holds the run's meta lock, so parallel commands lose nothing.
    """
    run_dir = Path(run_dir)
    for tag in [*(tags or []), *add_tags]:
        check_tag(tag)
    with locked(run_dir / META_LOCK, f"change the tags or note of run {run_dir.name}"):
        meta = read_meta(run_dir)
        current = meta["tags"] if tags is None else [clean_text(str(t)) for t in tags]
        removed = {clean_text(t) for t in remove_tags}
        current = [t for t in current if t not in removed] + [clean_text(t) for t in add_tags]
        meta["tags"] = list(dict.fromkeys(current))
        if note is not None:
            meta["note"] = clean_text(note)
        try:
            write_json_atomic(run_dir / META, meta)
        except FileRefused:
            raise
        except OSError as e:  # a full disk: the old meta.json stands
            raise UserError(
                f"cannot change the tags or note of run {run_dir.name}: {e.strerror}; free some space and "
                "try again"
            ) from e
    return meta


@contextmanager
def locked(path: Path, doing: str) -> Iterator[None]:
    """Hold an exclusive `flock` on the lock file `path` (a regular file, created if needed); a
    `UserError` saying what could not be done (`doing`) when it cannot be made."""
    try:
        fd = open_fd(path, os.O_RDWR | os.O_CREAT)
    except FileRefused:
        raise
    except OSError as e:
        raise UserError(f"cannot {doing}: {e.strerror} ({path})") from e
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
    try:
        fd = open_fd(path, os.O_WRONLY | os.O_CREAT)
    except FileRefused:
        raise
    except OSError as e:
        raise UserError(f"cannot start run {run_dir.name}: {e.strerror} ({path})") from e
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


# ----- what may be done to a run ----------------------------------------------------------------------

ACTIONS = ("stop", "resume", "rm")
"""What a user may ask of a run; `refusal` says when. Kill is a stop."""

UNFINISHED_STATUSES = ("pending", "running", "stopped", "killed", "failed")
"""Statuses a run can be resumed from once no worker owns it: `pending` is a run queued but never
launched (a foreground `dtvg run` or a pipeline interrupted before its turn); `running` is how a run
that was running looks to the launcher that has just claimed it to start it again."""


def refusal(action: str, run_id: str, status: str, owner: int | None) -> str | None:
    """Why `action` cannot be done to a run with this status and worker (`run_owner`), or None if it can.

    The one rule for the CLI and the dashboard: a run with a worker can only be stopped; one without can
    be removed, and resumed unless it completed.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    if action == "stop":
        return None if owner is not None else f"run {run_id} is not running ({status})"
    if owner is not None:
        return (
            f"run {run_id} is {status} (worker pid {owner or 'starting'}); "
            f"stop it first with `dtvg runs stop {run_id}`"
        )
    if action == "resume" and status not in UNFINISHED_STATUSES:
        return f"run {run_id} is {status}; only unfinished runs (stopped, killed, failed, queued) resume"
    return None


def action_refusal(
    run_dir: str | os.PathLike[str], action: str, summary: RunSummary | None = None
) -> str | None:
    """Why `action` cannot be done to the run now, or None (see `refusal`); `summary`: its summary, if
    the caller has a fresh one.

    A run whose Slurm job is in the queue is owned by that job (its worker may run on another host).
    """
    run_dir = Path(run_dir)
    summary = summary or summarize(run_dir)
    if summary.slurm_state is not None:
        if action == "stop":
            return None
        return (
            f"run {run_dir.name} is Slurm job {summary.job_id} ({summary.slurm_state}); "
            f"stop it first with `dtvg runs stop {run_dir.name}`"
        )
    return refusal(action, run_dir.name, summary.status, run_owner(run_dir))


def check_action(run_dir: str | os.PathLike[str], action: str) -> None:
    """`UserError` when `action` cannot be done to the run now (see `action_refusal`)."""
    reason = action_refusal(run_dir, action)
    if reason:
        raise UserError(reason)


# ----- the resume checkpoint --------------------------------------------------------------------------


def checkpoint_path(run_dir: str | os.PathLike[str]) -> Path | None:
    """The run's resume checkpoint after a check of its framing, or None when the run has none.

    `UserError` naming the file and the way out when it cannot be loaded: truncated, not a checkpoint
    of this format, or an old pickled one (never unpickled: a run folder may come from anyone).
    The check reads the safetensors header only; the tensors themselves are read by `training`.
    """
    folder = Path(run_dir) / CHECKPOINT
    path = folder / CHECKPOINT_FILE
    restart = f"delete {folder} to resume from step 0 (the steps done so far are trained again)"
    if not real_dir(folder):
        return None
    if not os.path.lexists(path):
        if (folder / OLD_CHECKPOINT_FILE).exists():
            raise UserError(
                f"{folder / OLD_CHECKPOINT_FILE} is an older version's pickled checkpoint, which is never "
                f"loaded (unpickling can run code); {restart}"
            )
        return None
    problem = _checkpoint_problem(path)
    if problem:
        raise UserError(f"checkpoint {path} {problem}; {restart}")
    return path


def _checkpoint_problem(path: Path) -> str | None:
    """What is wrong with the framing of a safetensors checkpoint file, or None."""
    try:
        with open_file(path) as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 < length <= size - 8:
                return f"is not a checkpoint (a {size}-byte file without a safetensors header)"
            header = parse_json(f.read(length))
    except FileRefused:
        raise
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    except ValueError:
        return "has a damaged header"
    try:
        meta = header["__metadata__"]
        ends = [int(t["data_offsets"][1]) for key, t in header.items() if key != "__metadata__"]
    except (TypeError, KeyError, IndexError, ValueError):
        return "has a damaged header"
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        return f"is not a checkpoint of format {CHECKPOINT_FORMAT}"
    needed = 8 + length + max(ends, default=0)
    if size < needed:
        return f"is truncated ({size} of {needed} bytes)"
    return None


def tail_log(run_dir: str | os.PathLike[str], lines: int = 20, name: str = LOG) -> list[str]:
    """The last `lines` lines of worker.log (or another log there, `name`; from its last 256 KiB), e.g.
    to show why a run failed."""
    try:
        with open_file(Path(run_dir) / name) as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _LOG_TAIL_BYTES))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:] if lines > 0 else []


@dataclass
class RunSummary:
    """One run at a glance: what the history index stores and listings show."""

    run_id: str
    """The run folder's name (config.json's `run_id` too, unless the folder was renamed or copied)."""
    stage: str
    """"stage1" or "stage2"."""
    method: str
    """Stage 2 method (`dtvg`, `spot`, …); "pt" for stage 1."""
    task: str
    """The task tuned in stage 1, or the target task of stage 2."""
    model: str
    """Backbone id or path."""
    status: str
    """One of `STATUSES`; see `derive_status`."""
    best_metric: float | None = None
    """`primary` of the last eval marked best."""
    metric_name: str | None = None
    """Name of the primary metric, from config "primary_metric" when present."""
    step: int = 0
    """Last training step seen in the events."""
    total_steps: int | None = None
    """Planned steps, from config "steps"."""
    started: float | None = None
    """Unix time of the first `run_started`."""
    ended: float | None = None
    """Unix time of the last `run_finished`, when the run is finished."""
    duration: float | None = None
    """Seconds spent running, summed over resumed segments (an unfinished one up to its last event)."""
    pid: int | None = None
    """Worker pid: the owner's (`run_owner`) while a worker owns the run, else from the last
    `run_started`, else (and while pending) from worker.pid."""
    error: str | None = None
    """The error of the last `run_finished`, when the run is finished."""
    tags: list[str] = field(default_factory=list)
    """User tags, from meta.json."""
    note: str = ""
    """User note, from meta.json."""
    run_dir: str = ""
    """Path of the run folder."""
    executor: str = "local"
    """Where the run runs: "slurm" when it was submitted to Slurm (its `slurm.json`), else "local"."""
    job_id: str | None = None
    """The Slurm job id of its latest submission; None when local."""
    host: str | None = None
    """The host the last segment ran on, when its `run_started` says."""
    slurm_state: str | None = None
    """Its Slurm job as `squeue` shows it ("queued (Priority)", "running"); None once it left the queue."""

    def to_dict(self) -> dict[str, Any]:
        """The fields as a new dict, in field order (what `asdict` gives, at a tenth of its cost: the
        dashboard writes back thousands)."""
        return {**vars(self), "tags": list(self.tags)}


def derive_status(
    state: RunState, launched_pid: int | None, launched_at: float | None, owner: int | None
) -> str:
    """The run's status from its folded events, its pidfile (pid and mtime, None when absent) and the
    worker owning it (`run_owner`: the pid holding its worker lock, 0 while launched, None when none).

    A run is live only while a worker owns it: the lock dies with its worker, while a pid in a file
    may by now name any other process (pids are reused).
    - the last lifecycle event is `run_finished`: its status;
    - the last one is `run_started`: "running" while a worker owns the run, else "killed";
    - no lifecycle event yet: "pending" while a worker owns the run or none was ever launched (a queued
      run, a foreground run about to start), "killed" once the launched worker is gone without a word.
    A newer launch (pidfile written after the last lifecycle event by another pid, which owns the run)
    is "pending" whatever came before: a resumed run whose worker is still loading.
    A live run whose worker is stopped (SIGSTOP, Ctrl-Z) is "suspended": it holds the run, so it is
    not resumed or removed, but it makes no progress until it gets SIGCONT (`dtvg runs stop` sends it).
    """
    live = owner is not None
    last_time = state.lifecycle_time
    start = state.last_start
    if last_time is None:
        status = "pending" if live or launched_pid is None else "killed"
    elif (
        live
        and launched_at is not None
        and launched_at > last_time
        and (start is None or start.pid != launched_pid)
    ):
        status = "pending"  # relaunched
    elif state.finish is not None:
        return state.finish.status
    else:
        status = "running" if live else "killed"
    return "suspended" if status != "killed" and owner and pid_suspended(owner) else status


def planned_steps(config: dict[str, Any]) -> int | None:
    """The steps a run's config asks for (its "steps"), None when it names no whole number."""
    steps = config.get("steps")
    return steps if isinstance(steps, int) and not isinstance(steps, bool) else None


def summarize(run_dir: str | os.PathLike[str], queue: slurm.Queue | None = None) -> RunSummary:
    """Summarize a run from its config.json, meta.json, events.jsonl and worker.pid (or Slurm job).

    `queue`: Slurm's view of the jobs of many runs summarized together (one squeue call for all).
    """
    run_dir = Path(run_dir)
    state = read_state(run_dir / EVENTS)
    return build_summary(run_dir, read_config(run_dir), read_meta(run_dir), state, queue)


def build_summary(
    run_dir: Path,
    config: dict[str, Any],
    meta: dict[str, Any],
    state: RunState,
    queue: slurm.Queue | None = None,
) -> RunSummary:
    """A run's summary from its folded events (the dashboard folds them incrementally, `summarize`
    reads them whole) plus its config, meta and pidfile, or for a Slurm run its job's queue state
    (from `queue`, else one squeue call)."""
    launched_pid = read_pid(run_dir)
    try:
        launched_at = (run_dir / PIDFILE).stat().st_mtime if launched_pid is not None else None
    except OSError:
        launched_at = None
    first, last = state.first_start, state.last_start
    record = slurm.read_job(run_dir)
    job_id = str(record["job_id"]) if record and record.get("job_id") else None
    job = (queue or slurm.Queue([job_id])).job_of(record) if job_id else None
    owner = run_owner(run_dir) if record is None else None
    if record is None:
        status = derive_status(state, launched_pid, launched_at, owner)
    else:
        status = slurm.run_status(state, job_id, job)
    finish = state.finish if status in TERMINAL_STATUSES else None
    pid = owner or (launched_pid if status == "pending" else (last.pid if last else None) or launched_pid)
    stage = str(config.get("stage") or (first.stage if first else ""))
    task = config.get("target" if stage == "stage2" else "task") or (first.label if first else "")
    return RunSummary(
        run_id=run_dir.name,
        stage=stage,
        method=str(
            config.get("method") or (first.method if first else "") or ("pt" if stage == "stage1" else "")
        ),
        task=str(task),
        model=str(config.get("model") or ""),
        status=status,
        best_metric=state.best_metric,
        metric_name=config.get("primary_metric"),
        step=state.step,
        total_steps=planned_steps(config),
        started=state.started,
        ended=finish.time if finish else None,
        duration=state.duration,
        pid=pid,
        error=finish.error if finish else exit_reason(run_dir, pid) if status == "killed" else None,
        tags=meta.get("tags", []),
        note=meta.get("note", ""),
        run_dir=str(run_dir),
        executor="slurm" if record else "local",
        job_id=job_id,
        host=last.host if last else None,
        slurm_state=job.describe() if job else None,
    )
