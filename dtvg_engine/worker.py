"""`python -m dtvg_engine.worker RUN_DIR`: run one configured run to its end.

This is the process the CLI's `--detach`, the foreground progress view and the TUI all launch. It owns
its run folder (the claim on worker.lock) for its whole life, so a second worker exits at once with
code 2 without writing anything. It reads `config.json`, writes the event stream, keeps the history
index current at start and end, and on SIGTERM, SIGUSR2 or Ctrl-C checkpoints and finishes with status
`stopped`, so `dtvg run resume` can go on. Run by a Slurm job (`slurm_submit`), it records the job and
reads the signal: SIGUSR2 that `dtvg runs stop` asked for stops the run; SIGUSR2 it did not ask for is
Slurm's warning (preemption, the time limit), answered by requeueing the job; SIGTERM alone is the job
being cancelled (`scancel`), which leaves the run `killed`, resumable from the checkpoint.
"""

from __future__ import annotations

import errno
import faulthandler
import fcntl
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from dtvg_engine.config import check_run_config, read_settings, unknown_keys
from dtvg_engine.errors import UserError
from dtvg_engine.runs import slurm
from dtvg_engine.runs.events import EventWriter, Log, RunFinished, RunStarted, iter_events
from dtvg_engine.runs.history import History
from dtvg_engine.runs.runfolder import CONFIG, EVENTS, WORKER_LOCK, read_config
from dtvg_engine.runs.runowner import (
    WORKER_LOCK_FD,
    claim_run,
    record_exit,
    record_owner,
    release_space,
    reserve_space,
)
from dtvg_engine.train import tasks

NO_SPACE_TEXT = os.strerror(errno.ENOSPC)
"""How a full disk is worded in an error, whoever raised it (an `OSError`, safetensors' own error)."""


def _stage_runner(stage: str):
    """The stage's run function, imported late so a bad config fails before torch loads."""
    if stage == "stage1":
        from dtvg_engine.train import stage1

        return stage1.run
    if stage == "stage2":
        from dtvg_engine.train import stage2

        return stage2.run
    raise UserError(f"unknown stage {stage!r} in config.json; expected stage1 or stage2")


def own_run(run_dir: Path) -> int:
    """The claim on the run: the one the launcher handed over, else a fresh one (a worker started by
    hand); `UserError` when another worker owns the run. Kept open until the worker exits."""
    handed = os.environ.pop(WORKER_LOCK_FD, None)  # not for this worker's own children
    if handed is not None and handed.isdigit():
        fd = int(handed)
        try:
            if os.path.samestat(os.fstat(fd), os.stat(run_dir / WORKER_LOCK)):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # already ours: only checks it
                os.set_inheritable(fd, False)
                return fd
        except OSError:
            pass
    fd = claim_run(run_dir)
    record_owner(fd, os.getpid())
    return fd


def _update_index(history: History, run_dir: Path) -> None:
    """Bring the run's history entry up to date; a broken index (derived: `dtvg runs list` rebuilds it)
    does not fail the run."""
    try:
        history.upsert(run_dir)
    except (UserError, OSError) as exc:  # OSError: a full disk
        print(f"warning: {exc}", file=sys.stderr, flush=True)


RECORDED_SIGNALS = (signal.SIGHUP, signal.SIGQUIT, signal.SIGALRM, signal.SIGUSR1, signal.SIGXCPU)
"""Signals that end a worker without a word but that it can catch: it records each as its end before
it dies of it. SIGKILL (the out-of-memory killer, kill -9) cannot be caught: only a process waiting for
the worker learns of it."""


def _record_end_on_signals(run_dir: Path) -> None:
    """Have a `RECORDED_SIGNALS` signal record itself in `worker.exit`, then end the worker as it would
    have (the default action), so its parent, if any, sees the same signal."""

    def end(signum: int, frame: object) -> None:
        record_exit(run_dir, os.getpid(), -signum)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for signum in RECORDED_SIGNALS:
        signal.signal(signum, end)


def run_worker(run_dir: Path, job_id: str | None = None) -> int:
    """Run the run; `job_id` is the Slurm job this worker runs as (None: a local worker).

    Once it owns the run, the worker records how it ends (`worker.exit`: its exit code, or a signal it
    can catch) itself: a detached worker has nobody waiting for it to record that.
    """
    config = read_config(run_dir)
    check_run_config(config, run_dir / CONFIG)  # a worker started by hand, or by Slurm, checks it too
    claim = own_run(run_dir)
    code = 1  # what Python exits with when an exception escapes
    try:
        _record_end_on_signals(run_dir)
        reserve_space(run_dir)  # the launcher's, kept; a worker started by hand makes its own
        code = _run(run_dir, config, job_id)
    except UserError:
        code = 2  # `main` says why
        raise
    finally:
        release_space(run_dir)  # room for the record, should the disk be full
        record_exit(run_dir, os.getpid(), code)
        os.close(claim)
    return code


def _run(run_dir: Path, config: dict[str, Any], job_id: str | None) -> int:
    """Run the configured stage to its end, writing the events and the history index."""
    received: set[int] = set()  # the signals that asked this worker to stop

    def request_stop(signum: int, frame: object) -> None:
        received.add(signum)
        if job_id and slurm.kill_requested(run_dir):  # Slurm cancels with SIGTERM: end now, as a kill
            os._exit(128 + signum)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGUSR2, request_stop)  # Slurm's warning before a time limit; `dtvg runs stop`
    if job_id and slurm.stop_requested(run_dir):  # asked before these handlers could hear it
        received.add(signal.SIGUSR2)
    history = History(run_dir.parent)
    label_key = "task" if config["stage"] == "stage1" else "target"
    started = time.time()
    with EventWriter(run_dir / EVENTS) as events:
        events.emit(
            RunStarted(
                run_id=config["run_id"],
                stage=config["stage"],
                method=config["method"],
                pid=os.getpid(),
                config=config,
                host=socket.gethostname(),
                executor="slurm" if job_id else "local",
                job_id=job_id,
                **{label_key: config[label_key]},
            )
        )
        unknown = unknown_keys(config)
        if unknown:  # a newer version's settings: this one cannot honour them, so say so
            message = f"config.json: {', '.join(unknown)} unknown to this version of dtvg, kept but not used"
            events.emit(Log(level="warning", message=message))
        _update_index(history, run_dir)
        error = None
        outcome = None
        try:
            from dtvg_engine.train.training import RunFailed

            try:
                tasks.adopt(config, str(run_dir / "config.json"))  # the user tasks it uses, as recorded
                run_stage = _stage_runner(config["stage"])
                outcome = run_stage(run_dir, config, read_settings(config), events, lambda: bool(received))
            except (UserError, RunFailed) as exc:
                error = str(exc)
            finally:
                release_space(run_dir)  # room for what follows, should the disk have filled meanwhile
        except Exception as exc:  # a bug, a full disk, an unexpected library error: keep the run readable
            traceback.print_exc()
            error = f"{type(exc).__name__}: {exc}"
            if NO_SPACE_TEXT in error:
                error += f"; free some space, then `dtvg run resume {run_dir.name}`"
        status = "failed" if error else outcome.status
        if status == "stopped" and job_id and not slurm.stop_requested(run_dir):
            if signal.SIGUSR2 not in received:  # cancelled: no `run_finished`, so the run shows killed
                _leave_cancelled(job_id, events, outcome.step)
                return 0
            limits = _time_limits(run_dir, job_id, time.time() - started)
            if limits is not None and limits > slurm.MAX_TIME_LIMITS:
                status, error = "failed", _out_of_time(run_dir, job_id, limits)
            elif _requeued(run_dir, job_id, events, history, outcome.step, limits):
                return 0
        if error:
            events.emit(Log(level="error", message=error))
            print(f"error: {error}", file=sys.stderr, flush=True)
        summary = {
            "best_metric": outcome.best_metric if outcome else None,
            "best_step": outcome.best_step if outcome else None,
            "steps": outcome.step if outcome else None,
            "test": outcome.test_metrics if outcome else {},
            "seconds": time.time() - started,
        }
        events.emit(RunFinished(status=status, summary=summary, error=error))
    _update_index(history, run_dir)
    return 1 if status == "failed" else 0


def _leave_cancelled(job_id: str, events: EventWriter, step: int) -> None:
    """Say why the segment ends open: Slurm ended the job with SIGTERM and no warning (`scancel`, or
    `scontrol requeue` from outside).

    Without a `run_finished` the run shows killed once the job has left the queue, and resumes from
    the checkpoint just saved; a job requeued from outside goes on from there when it starts again.
    """
    message = f"Slurm ended job {job_id} at step {step} (SIGTERM, no warning: cancelled); resumable from here"
    events.emit(Log(level="warning", message=message))


def _time_limits(run_dir: Path, job_id: str, ran_s: float) -> int | None:
    """How many times the job has now reached its time limit, this time included; None when Slurm's
    warning came too early for that (a preemption, which is requeued without limit)."""
    if not slurm.at_time_limit(slurm.read_job(run_dir), ran_s):
        return None
    said = f"Slurm job {job_id} reached its time limit"
    earlier = sum(isinstance(e, Log) and e.message.startswith(said) for e in iter_events(run_dir / EVENTS))
    return earlier + 1


def _out_of_time(run_dir: Path, job_id: str, limits: int) -> str:
    """Why a run that keeps reaching its job's time limit ends here, and how to go on."""
    limit = ((slurm.read_job(run_dir) or {}).get("resources") or {}).get("time") or slurm.DEFAULT_TIME
    return (
        f"Slurm job {job_id} reached its time limit ({limit}) {limits} times; resume it with more time, "
        f"e.g. dtvg run resume {run_dir.name} --slurm-time {2 * slurm.time_minutes(limit)}"
    )


def _requeued(
    run_dir: Path, job_id: str, events: EventWriter, history: History, step: int, limits: int | None
) -> bool:
    """Put a job that Slurm stopped (preemption, its time limit; not `dtvg runs stop`) back in the queue,
    so the run goes on from its checkpoint when the job starts again; False when Slurm refused.
    `limits`: how many times the job has reached its time limit (None: preempted).

    The segment stays open (no `run_finished`): the run shows pending while queued, killed if lost.
    """
    if limits is None:
        message = f"Slurm preempted job {job_id} at step {step}; requeueing it"
    else:
        message = (
            f"Slurm job {job_id} reached its time limit at step {step}; requeueing it "
            f"({limits} of {slurm.MAX_TIME_LIMITS} times)"
        )
    events.emit(Log(level="warning", message=message))
    _update_index(history, run_dir)
    error = slurm.requeue(job_id)  # Slurm now ends this job's processes: return at once
    if error:
        events.emit(Log(level="error", message=f"could not requeue Slurm job {job_id}: {error}"))
    return error is None


def main(argv: list[str] | None = None, job_id: str | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m dtvg_engine.worker RUN_DIR", file=sys.stderr)
        return 2
    faulthandler.enable()  # a crash in native code (SIGSEGV, SIGABRT) leaves its traceback in worker.log
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        return run_worker(Path(args[0]), job_id)
    except UserError as exc:  # not this worker's run (or no run at all): say so, write nothing
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
