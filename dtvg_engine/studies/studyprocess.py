"""A study's pipeline as a process: the record it leaves in the runs directory, the studies a dashboard
can open, and starting and stopping a study's pipeline.

Standard library only: the dashboard's study screens start and stop studies through here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtvg_engine.errors import UserError
from dtvg_engine.runs import slurm
from dtvg_engine.runs.atomic import write_json_atomic, write_text_atomic
from dtvg_engine.runs.runowner import lock_owner, pid_alive, record_owner
from dtvg_engine.runs.safefiles import PID_LIMIT, make_dir, open_fd, read_bytes, read_json
from dtvg_engine.studies.study import Runs
from dtvg_engine.studies.studyfile import StudySpec, load_experiment
from dtvg_engine.studies.studyprogress import fill

PIPELINES_DIR = "_pipelines"
"""`<runs_dir>/_pipelines/`: what a runs directory's pipelines leave (their logs, studies and pids)."""

# ----- finding studies ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyFile:
    """A study the dashboard can open: a pipeline file, or the study a pipeline recorded in a runs dir."""

    name: str
    path: Path | None
    """The TOML file, or the record in `<runs_dir>/_pipelines/`; None for results without either."""
    results: bool
    """Whether the runs directory holds its pipeline results (`<name>-results.json`)."""


def record_path(runs_dir: Path, name: str) -> Path:
    """Where a pipeline records the study it runs: `<runs_dir>/_pipelines/<name>.json`."""
    return Path(runs_dir) / PIPELINES_DIR / f"{name}.json"


def record_study(runs_dir: Path, spec: StudySpec, path: Path) -> None:
    """What a pipeline leaves as it starts: the study it runs (as resolved, `--data-dir` included) and
    its file, so that the study can be opened and started again without the file at hand, and its own
    pid, so that the study can be stopped however the pipeline was started."""
    record = record_path(runs_dir, spec.name)
    record.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, {"file": str(Path(path).resolve()), "spec": spec.record()})
    write_text_atomic(_pidfile(runs_dir, spec.name), f"{os.getpid()}\n")


def forget_study(runs_dir: Path, name: str) -> None:
    """Remove what `record_study` left, for a pipeline that started nothing (sbatch refused it)."""
    record_path(runs_dir, name).unlink(missing_ok=True)
    _pidfile(runs_dir, name).unlink(missing_ok=True)
    lock = _lockfile(runs_dir, name)
    with contextlib.suppress(OSError):  # its lock file too, unless a pipeline of the study holds it now
        fd = open_fd(lock, os.O_RDWR)
        try:
            if _lock_current(fd, lock):
                lock.unlink()
        finally:
            os.close(fd)
    with contextlib.suppress(OSError):  # gone only when empty: other studies' records stay
        (Path(runs_dir) / PIPELINES_DIR).rmdir()


def read_record(path: Path) -> tuple[StudySpec, Path | None]:
    """A pipeline's record: the study and its file (None when the file is gone)."""
    try:
        record = read_json(path)
        spec, file = record["spec"], Path(record["file"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read the study record {path} ({e}); run its pipeline file again") from None
    lists = ("sources", "targets", "methods")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise UserError(f"{path} is not a study record; run its pipeline file again")
    if not all(isinstance(spec.get(key), list) for key in lists):
        raise UserError(f"{path} is not a study record; run its pipeline file again")
    return StudySpec.of(spec), file if file.is_file() else None


def load_study(path: Path) -> tuple[StudySpec, Path | None]:
    """A study and the pipeline file that runs it, from that TOML file (checked as the pipeline checks
    it) or from a pipeline's record in a runs directory."""
    path = Path(path)
    return read_record(path) if path.suffix == ".json" else (load_experiment(path), path)


def find_studies(runs_dir: Path, folders: Iterable[Path]) -> list[StudyFile]:
    """The studies to offer: pipeline files (`*.toml`) in `folders`, the studies the runs directory's
    pipelines recorded, and any whose results it holds; one per name, a file before a record."""
    runs_dir = Path(runs_dir)
    results = {p.name[: -len("-results.json")] for p in runs_dir.glob("*-results.json")}
    found: dict[str, StudyFile] = {}
    files = [p for folder in folders for p in sorted(Path(folder).glob("*.toml"))]
    for path in [*files, *sorted((runs_dir / PIPELINES_DIR).glob("*.json"))]:
        try:
            name = load_study(path)[0].name
        except UserError:
            continue  # not a study file (or a broken one): nothing to open
        found.setdefault(name, StudyFile(name, path, name in results))
    for name in sorted(results - set(found)):
        found[name] = StudyFile(name, None, True)
    return sorted(found.values(), key=lambda s: s.name)


# ----- the study's pipeline process ---------------------------------------------------------------------


def _pidfile(runs_dir: Path, name: str) -> Path:
    return Path(runs_dir) / PIPELINES_DIR / f"{name}.pid"


def _lockfile(runs_dir: Path, name: str) -> Path:
    return Path(runs_dir) / PIPELINES_DIR / f"{name}.lock"


@contextlib.contextmanager
def claim_study(runs_dir: Path, name: str, wait_s: float = 0.0) -> Iterator[None]:
    """Own the study for the block: hold its pipeline lock (`_pipelines/<name>.lock`, flock, with this
    process's pid), so that two pipelines of one study never train side by side in a runs directory.
    The lock dies with its process, however it ends. `UserError` naming the pipeline that holds it
    (after `wait_s` seconds: a Slurm pass may start while the pass that submitted it is exiting)."""
    Path(runs_dir).mkdir(parents=True, exist_ok=True)
    lock, deadline = _lockfile(runs_dir, name), time.monotonic() + wait_s
    while True:
        make_dir(Path(runs_dir) / PIPELINES_DIR)
        fd = open_fd(lock, os.O_RDWR | os.O_CREAT)
        try:
            if _lock_current(fd, lock):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        if time.monotonic() >= deadline:
            owner = lock_owner(lock)
            raise UserError(
                f"study {name} is already running in {runs_dir}/ (pipeline pid {owner or '?'}); "
                "wait for it to end, or stop it (the dashboard's study view, s) before running again"
            )
        time.sleep(0.5)
    try:
        record_owner(fd, os.getpid())
        yield
    finally:
        os.close(fd)


def _lock_current(fd: int, path: Path) -> bool:
    """Take the lock on `fd` if free, and keep it only if `fd` is still the file at `path`: a study that
    left no trace removes its lock file (`forget_study`), and a lock on a removed file guards nothing."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    with contextlib.suppress(FileNotFoundError):
        if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
            return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _jobfile(runs_dir: Path, name: str) -> Path:
    return Path(runs_dir) / PIPELINES_DIR / f"{name}.slurm.json"


def record_pipeline_job(runs_dir: Path, name: str, record: dict[str, Any]) -> None:
    """Record the Slurm job that runs the rest of the study's pipeline (`job_id`, `folder`), so the study
    is seen running, and can be stopped, while no pipeline process lives anywhere."""
    write_json_atomic(_jobfile(runs_dir, name), record)


def pipeline_job(runs_dir: Path, name: str) -> dict[str, Any] | None:
    """The record of the Slurm job running the rest of the study's pipeline while it is in the queue
    (or squeue cannot tell), else None."""
    try:
        record = read_json(_jobfile(runs_dir, name))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and slurm.job_state(record) is not None else None


def pipeline_running(runs_dir: Path, name: str) -> str | None:
    """Where the study's pipeline runs, "pid N" or "Slurm job N", or None when it does not."""
    pid = pipeline_pid(runs_dir, name)
    job = pipeline_job(runs_dir, name) if pid is None else None
    return f"pid {pid}" if pid is not None else f"Slurm job {job['job_id']}" if job else None


def pipeline_pid(runs_dir: Path, name: str) -> int | None:
    """The pid of the study's pipeline while it runs, else None: the one holding the study's lock
    (`claim_study`), else one just started that has yet to take it.

    A pid in the pidfile is only believed while its process is a `dtvg run pipeline` (pids are reused).
    """
    owner = lock_owner(_lockfile(runs_dir, name))
    if owner:
        return owner
    try:
        pid = int(read_bytes(_pidfile(runs_dir, name), PID_LIMIT).strip())
    except (OSError, ValueError):
        return None
    if not pid_alive(pid):
        return None
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid  # no /proc (macOS): the pid is alive, trust it
    return pid if b"dtvg" in command and b"pipeline" in command else None


def start_pipeline(path: Path, runs_dir: Path, data_dir: str | None = None) -> tuple[int, Path]:
    """Start (or resume) the study of pipeline file `path` as `dtvg run pipeline` in its own process
    group, as `dtvg run pipeline` in a terminal would; return its pid and its log file.

    The pipeline reuses finished runs and resumes stopped ones, so starting a study again resumes it.
    `data_dir` is the `--data-dir` it ran with before (runs of another data dir are other runs).
    """
    from dtvg_engine.runs import launcher

    name = load_experiment(path).name
    running = pipeline_running(runs_dir, name)
    if running is not None:
        raise UserError(f"study {name} is already running (pipeline {running})")
    folder = Path(runs_dir) / PIPELINES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}.log"
    command = [sys.executable, "-m", "dtvg_engine.cli", "run", "pipeline", str(Path(path).resolve())]
    command += ["--runs-dir", str(Path(runs_dir).resolve())]
    command += ["--data-dir", data_dir] if data_dir else []
    child = launcher.spawn_detached(command, log)
    write_text_atomic(_pidfile(runs_dir, name), f"{child.pid}\n")  # the pipeline writes it too, as it starts
    return child.pid, log


def stop_study(spec: StudySpec, runs_dir: Path) -> tuple[bool, int]:
    """Stop the study: end its pipeline first (so it starts no further run), then ask each of the study's
    runs that is still running to stop gracefully (checkpoint, status stopped) and cancel those still
    queued on Slurm. Returns whether a pipeline was running (a process, or a Slurm job waiting to run
    the rest of it) and how many runs were asked to stop; starting the study again resumes them."""
    from dtvg_engine.runs import launcher

    pid = pipeline_pid(runs_dir, spec.name)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGTERM)  # the pipeline alone: its workers run in their own sessions
        except ProcessLookupError:
            pass
        launcher.wait_for_exit(pid, timeout=10)
    # before its runs: once they end, the job that waits for them would submit the next stage
    job_cancelled = slurm.cancel(pipeline_job(runs_dir, spec.name))
    runs = Runs.read(runs_dir)  # read after the pipeline ended: it may have launched a run just before
    live = [  # queued: waiting for a worker here (nothing to stop), or in Slurm's queue (cancelled)
        runs.runs_dir / slot.run_id
        for slot in fill(spec, runs)
        if slot.state in ("running", "queued") and slot.run_id
    ]
    return pid is not None or job_cancelled, sum(1 for run_dir in live if launcher.stop_run(run_dir))
