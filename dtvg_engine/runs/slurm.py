"""Slurm runs as the run folders and the queue see them: resources, the job record, job states, stop,
kill, requeue.

A run submitted to Slurm keeps its submission record, `slurm.json`, in its folder: the job id, the
resources it asked for, where submitit keeps its files, and whether a stop was requested. Its status
comes from the run folder and from `squeue` (queued or running), never from submitit's result files:
without Slurm accounting submitit cannot tell a job's end. Queries are batched: one `squeue` call
answers for every job a listing or a dashboard refresh shows (`Queue`).

A job id alone does not name a run's job: a new controller, a wrap-around or a runs directory moved
to another cluster hands the same id to someone else's job. A job counts as the run's only when its
log lies in the submission's own folder (`folder` in the record, unique per submission); any other
job with that id is taken to be gone, so a run never shows, stops or kills a job not its own.

Standard library only, because the dashboard imports it; submitting (through submitit) lives in
`slurm_submit`, which only the commands that submit import.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dtvg_engine.errors import UserError
from dtvg_engine.runs.atomic import write_json_atomic
from dtvg_engine.runs.events import RunState
from dtvg_engine.runs.safefiles import read_json

JOB_FILE = "slurm.json"
"""A Slurm run's submission record: `job_id`, `folder` (submitit's files), `resources`, `submitted`,
`previous_jobs` (their ids) and `previous_submissions` (each one's `job_id` and `folder`) and, once
`dtvg runs stop` asked, `stop_requested` (and with `--kill`, `kill_requested`; unix times)."""

SUBMITIT_DIR = "_slurm"
"""Under the runs directory: one folder of submitit's files per submission."""

_JOB_ID = re.compile(r"\d+(?:_\d+)?")
"""A job id as sbatch hands them out (`12`, or `12_3` for an array's task)."""

QUEUED_STATES = frozenset(
    {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "CONFIGURING", "POWER_UP_NODE"}
)
"""Job states in which the job waits for its (next) start."""

_SQUEUE_TIMEOUT_S = 30

_PING_TIMEOUT_S = 10
"""How long `scontrol ping` may take: it answers at once unless the controller's host is unreachable."""

# ----- what a job asks for -----

DEFAULT_TIME = "4:00:00"
"""Time limit of a run's job unless told: a run that needs longer is requeued at the limit and goes on."""

MAX_TIME_LIMITS = 3
"""Requeues at its time limit a job gets before its run ends failed (submitit's `max_num_timeout`):
a run far longer than its limit must not be requeued without end."""

REFUSED_OPTIONS = frozenset({"array", "output", "error", "open-mode", "wrap", "parsable", "signal"})
"""sbatch options dtvg sets itself (submitit's files and the warning signal the worker answers)."""

RESOURCE_KEYS = ("partition", "time", "gpus", "cpus", "mem")
"""The resources with an option of their own (`--slurm-partition`, …); anything else goes in `options`."""

_TIME = re.compile(r"^(?:(?P<days>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?$")


def time_minutes(text: str) -> int:
    """A Slurm time limit ("90", "1:30:00", "2-00:00:00", "1-12") in whole minutes, rounded up."""
    match = _TIME.match(str(text).strip())
    if not match:
        raise UserError(f"slurm time {text!r}: use minutes, HH:MM:SS or D-HH:MM:SS (as sbatch --time)")
    days, a, b, c = (int(v) if v else None for v in match.group("days", "a", "b", "c"))
    if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = a * 3600 + b * 60 + c
    elif b is not None:  # MM:SS
        seconds = a * 60 + b
    else:  # MM
        seconds = a * 60
    if seconds <= 0:
        raise UserError(f"slurm time {text!r} must be longer than zero")
    return math.ceil(seconds / 60)


def at_time_limit(record: Mapping[str, Any] | None, ran_s: float) -> bool:
    """Whether Slurm's warning to a job that has run `ran_s` seconds is its time limit rather than a
    preemption. submitit's rule: a job is guaranteed min(80 %, all but 10 minutes) of its time."""
    limit = time_minutes(((record or {}).get("resources") or {}).get("time") or DEFAULT_TIME) * 60
    return ran_s >= min(0.8 * limit, limit - 600)


def parse_options(items: list[str]) -> dict[str, str]:
    """`--slurm-option` values ("account=lab", "--qos=high", "exclusive") as sbatch option → value."""
    options: dict[str, str] = {}
    for item in items:
        name, _, value = item.strip().lstrip("-").partition("=")
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", name):
            raise UserError(f"--slurm-option {item!r}: expected NAME=VALUE or NAME, e.g. account=mylab")
        options[name] = value
    return options


@dataclass
class Resources:
    """What each run's job asks Slurm for."""

    partition: str | None = None
    time: str = DEFAULT_TIME
    """Time limit, as sbatch --time."""
    gpus: int | None = None
    """GPUs per job (a DTVG run uses one)."""
    cpus: int | None = None
    """CPUs per job."""
    mem: str | None = None
    """Memory per job, as sbatch --mem ("16G")."""
    options: dict[str, str] = field(default_factory=dict)
    """Any other sbatch option: name → value ("" for a flag such as exclusive)."""
    setup: list[str] = field(default_factory=list)
    """Shell lines the job runs before the worker (`module load cuda`, activating an environment), as
    submitit's `setup`."""

    def __post_init__(self) -> None:
        time_minutes(self.time)
        if not isinstance(self.setup, list) or not all(isinstance(line, str) for line in self.setup):
            raise UserError('slurm setup must be a list of shell lines, e.g. setup = ["module load cuda"]')
        for name, value in (("gpus", self.gpus), ("cpus", self.cpus)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise UserError(f"slurm {name} must be a whole number ≥ 0 (got {value!r})")
        refused = sorted(set(self.options) & REFUSED_OPTIONS)
        if refused:
            raise UserError(f"slurm option(s) {', '.join(refused)} are set by dtvg itself; leave them out")

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str) -> Resources:
        """Resources from a pipeline's `[slurm]` table (or a run's record); `where` names it in errors."""
        unknown = sorted(set(table) - {*RESOURCE_KEYS, "options", "setup"})
        if unknown:
            allowed = ", ".join((*RESOURCE_KEYS, "options", "setup"))
            raise UserError(f"{where}: unknown key(s) {', '.join(unknown)} in [slurm]; allowed: {allowed}")
        options = table.get("options", {})
        if not isinstance(options, Mapping):
            raise UserError(f"{where}: 'options' must be a table of sbatch option = value")
        values = {key: table[key] for key in RESOURCE_KEYS if table.get(key) is not None}
        for key in ("partition", "mem", "time"):
            if key in values:
                values[key] = str(values[key])
        options = {str(k): "" if v is True else str(v) for k, v in options.items()}
        return cls(**values, options=options, setup=table.get("setup") or [])

    def override(self, **changes: Any) -> Resources:
        """These resources with the given (not None) values replaced, options merged."""
        options = {**self.options, **(changes.pop("options", None) or {})}
        kept = {k: v for k, v in changes.items() if v is not None}
        return Resources(**{**asdict(self), **kept, "options": options})

    def sbatch_parameters(self) -> dict[str, Any]:
        """submitit's SlurmExecutor parameters for these resources."""
        params: dict[str, Any] = {
            "time": time_minutes(self.time),
            "stderr_to_stdout": True,
            # the job may be put back in the queue: at preemption, at its time limit
            "additional_parameters": {"requeue": True, **{k: v or True for k, v in self.options.items()}},
        }
        for key, name in (("partition", "partition"), ("gpus", "gpus_per_node"), ("cpus", "cpus_per_task")):
            if getattr(self, key):
                params[name] = getattr(self, key)
        if self.mem:
            params["mem"] = self.mem
        if self.setup:
            params["setup"] = list(self.setup)
        return params


# ----- the queue -----


@dataclass(frozen=True)
class JobState:
    """One job as `squeue` shows it."""

    state: str
    """Slurm's job state (`squeue %T`): PENDING, RUNNING, COMPLETING, …; UNKNOWN when squeue failed."""
    reason: str
    """Why it waits (`squeue %r`): Priority, Resources, BeginTime, JobArrayTaskLimit, …; "None" if it runs."""
    log: str = ""
    """Where the job writes its output (`squeue -O StdOut`, maybe still holding patterns such as %A)."""

    def submitted_from(self, folder: object) -> bool:
        """Whether this job is the one submitted with its files in `folder`: its log lies there.

        Folders are compared by name (`<time>-<random>`, unique per submission), so a runs directory
        reached by another path still knows its jobs.
        """
        return (
            isinstance(folder, str)
            and bool(folder and self.log)
            and Path(self.log).parent.name == Path(folder).name
        )

    @property
    def queued(self) -> bool:
        return self.state in QUEUED_STATES

    def describe(self) -> str:
        """How the dashboard shows it: "queued (Priority)", "running", "unknown (squeue failed)"."""
        if self.queued:
            return f"queued ({self.reason})" if self.reason and self.reason != "None" else "queued"
        text = self.state.lower()
        return f"{text} ({self.reason})" if self.reason and self.reason != "None" else text


UNREACHABLE = JobState("UNKNOWN", "squeue failed")
"""The state of every job when `squeue` cannot answer: the job is taken to be there, never lost."""


def controller_problem() -> str | None:
    """Why Slurm's controller cannot be asked now, in Slurm's words ("Slurmctld(primary) at node is
    DOWN", no configuration found), or None when it answers.

    Asked (`scontrol ping`, one quick message) before sbatch or squeue: their clients keep retrying a
    controller that is down for Slurm's MessageTimeout (10 s) before they give up, a ping does not;
    and every Slurm command waits a minute for a `SLURM_CONF` file that is not there.
    """
    conf = os.environ.get("SLURM_CONF")
    if conf and not os.path.isfile(conf):
        return f"SLURM_CONF names {conf}, which is not a file"
    try:
        done = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=_PING_TIMEOUT_S)
    except FileNotFoundError:
        return "scontrol is not on PATH: this is not a machine of a Slurm cluster"
    except subprocess.TimeoutExpired:
        return f"scontrol ping had no answer in {_PING_TIMEOUT_S} s"
    except OSError as exc:
        return f"scontrol ping: {exc}"
    if done.returncode == 0 or " is UP" in done.stdout:  # a backup controller may answer for the primary
        return None
    down = [line.strip() for line in done.stdout.splitlines() if " is DOWN" in line]
    said = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    return (down or said[-1:] or [f"scontrol ping exited {done.returncode}"])[0]


def check_controller() -> None:
    """`UserError` naming why Slurm's controller cannot be asked and what to do, before anything is
    submitted (see `controller_problem`)."""
    problem = controller_problem()
    if problem:
        raise UserError(
            f"Slurm's controller does not answer ({problem}): start it or ask the cluster's admins, "
            "or set SLURM_CONF to your cluster's slurm.conf; nothing was submitted"
        )


def squeue(job_ids: Iterable[str]) -> dict[str, JobState] | None:
    """The queue state of these jobs, in one `squeue` call; None when squeue cannot be asked.

    A job that is not in the answer has left the queue (finished, cancelled, failed or lost).
    Array tasks are asked and answered one by one (`12_3`), pending ones too (`--array`). A controller
    that is down is found out at once (`controller_problem`), not after squeue's own retries.
    """
    ids = sorted({str(j) for j in job_ids if j})
    if not ids:
        return {}
    if controller_problem():
        return None
    fields = "JobArrayID:|,State:|,Reason:|,StdOut:"  # the log last: a path may hold anything
    command = ["squeue", "--noheader", "--array", "--jobs", ",".join(ids), "--Format", fields]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=_SQUEUE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        # asked about one job only, squeue fails when Slurm has already forgotten it
        return {} if "Invalid job id" in done.stderr else None
    states: dict[str, JobState] = {}
    for line in done.stdout.splitlines():
        job_id, state, reason, log = (line.strip().split("|", 3) + ["", "", ""])[:4]
        if job_id and state:
            states[job_id] = JobState(state, reason, log.strip())
    return states


class Queue:
    """Slurm's view of a set of jobs, from one `squeue` call made the first time one is looked up."""

    def __init__(self, job_ids: Iterable[str]) -> None:
        self._ids = [j for j in job_ids if j]
        self._states: dict[str, JobState] | None = None
        self._asked = False

    @classmethod
    def of_runs(cls, run_dirs: Iterable[str | os.PathLike[str]]) -> Queue:
        """The queue of the jobs of these runs' submission records (local runs have none)."""
        return cls(record["job_id"] for d in run_dirs if (record := read_job(d)) and record.get("job_id"))

    def job_of(self, record: Mapping[str, Any] | None) -> JobState | None:
        """The state of the job a submission record names, or None when that job has left the queue,
        or the job with its id is not the one submitted (see `JobState.submitted_from`);
        `UNREACHABLE` when squeue failed."""
        job_id = str(record.get("job_id") or "") if record else ""
        state = self.get(job_id) if job_id else None
        if state is None or state is UNREACHABLE:
            return state
        return state if state.submitted_from(record.get("folder")) else None

    def get(self, job_id: str) -> JobState | None:
        """The state of whatever job has this id now, or None when there is none; `UNREACHABLE` when
        squeue failed. Which run it belongs to is `job_of`'s question."""
        if not self._asked:
            self._states = squeue(self._ids)
            self._asked = True
        if self._states is None:
            return UNREACHABLE
        if job_id not in self._ids:  # not asked for: ask for it alone rather than call it lost
            self._ids.append(job_id)
            found = squeue([job_id])
            if found is None:
                return UNREACHABLE
            self._states.update(found)
        return self._states.get(job_id)


def read_job(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run's submission record, or None for a local run (or an unreadable record)."""
    try:
        record = read_json(Path(run_dir) / JOB_FILE)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_job(run_dir: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Replace the run's submission record atomically."""
    write_json_atomic(Path(run_dir) / JOB_FILE, record)


def job_id_of(run_dir: str | os.PathLike[str]) -> str | None:
    """The Slurm job id of the run's current submission, None for a local run or one being submitted."""
    record = read_job(run_dir)
    job_id = record.get("job_id") if record else None
    return str(job_id) if job_id else None


def log_path(record: Mapping[str, Any] | None) -> Path | None:
    """Where the job of a submission record writes Slurm's and submitit's output (srun's errors, a
    kill by Slurm): `<runs>/_slurm/<submission>/<job>_0_log.out`; None without a job."""
    if not record or not record.get("job_id") or not isinstance(record.get("folder"), str):
        return None
    return Path(record["folder"]) / f"{record['job_id']}_0_log.out"


def remove_job_files(record: Mapping[str, Any] | None, runs_dir: str | os.PathLike[str]) -> None:
    """Delete what the run's submissions, this one and those before, keep of its jobs under
    `<runs_dir>/_slurm/` (each job's log, pickles and script, all named `<job>_…`, and submitit's
    link to the script), and each submission's folder once nothing else is left in it. A record is
    data: a folder elsewhere or an id that is no job id deletes nothing."""
    submissions = Path(runs_dir).resolve() / SUBMITIT_DIR
    previous = (record or {}).get("previous_submissions")
    for submission in [record, *(previous if isinstance(previous, list) else [])]:
        if not isinstance(submission, Mapping) or not _JOB_ID.fullmatch(str(submission.get("job_id"))):
            continue
        log = log_path(submission)
        if log is None or log.parent.resolve().parent != submissions:
            continue
        mine = f"{submission['job_id']}_"
        for path in log.parent.glob(f"{mine}*"):
            path.unlink(missing_ok=True)
        for link in log.parent.glob(".submission_file_*"):  # submitit's link to the job's script
            if link.is_symlink() and Path(os.readlink(link)).name.startswith(mine):
                link.unlink()
        with contextlib.suppress(OSError):  # other runs of the same job array keep theirs
            log.parent.rmdir()


def job_state(record: Mapping[str, Any] | None) -> JobState | None:
    """The state of the job of this submission record, asked alone (see `Queue.job_of`)."""
    job_id = str(record.get("job_id") or "") if record else ""
    return Queue([job_id]).job_of(record) if job_id else None


def active_job(run_dir: str | os.PathLike[str]) -> str | None:
    """The run's Slurm job id while its job is in the queue (or squeue cannot tell), else None."""
    record = read_job(run_dir)
    return str(record["job_id"]) if record and job_state(record) is not None else None


def run_status(events: RunState, job_id: str | None, state: JobState | None) -> str:
    """A Slurm run's status from its folded events and its job's queue state (None: left the queue).

    - the job waits in the queue (first start or requeued): "pending";
    - it runs: "pending" until its worker's `run_started` (naming this job) is written, then "running",
      and the `run_finished` status once the worker is done while the job ends;
    - it left the queue: the last `run_finished` status, else "killed" (cancelled, timed out, lost);
    - no job id yet (being submitted): "pending".
    """
    if job_id is None:
        return "pending"
    if state is None:
        return events.finish.status if events.finish else "killed"
    start = events.last_start
    if state.queued or start is None or start.job_id != job_id:
        return "pending"
    return events.finish.status if events.finish else "running"


def job_from_environment() -> str | None:
    """The id of the Slurm job this process runs in (`12_3` for an array task), None outside Slurm."""
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return os.environ.get("SLURM_JOB_ID") or None


def _scancel(*args: str) -> bool:
    try:
        done = subprocess.run(["scancel", *args], capture_output=True, timeout=_SQUEUE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def stop(run_dir: str | os.PathLike[str]) -> bool:
    """Ask the run's job to stop for good: its worker checkpoints and finishes "stopped".

    The request is recorded first, so the worker knows it is not a preemption (which it would answer
    by requeueing); then the job is signalled (SIGUSR2, as Slurm warns a job before its time limit),
    or cancelled outright while it still waits in the queue. A job squeue shows running may not have
    its worker listening yet (it is starting, or starting again after a requeue), and submitit takes
    an early SIGUSR2 for a preemption and requeues the job: so a worker that starts with a stop on
    record stops at once. False when the run's job is not in the queue, or squeue cannot tell that
    the job with its id is the run's.
    """
    record = read_job(run_dir)
    state = job_state(record)
    if record is None or state is None or state is UNREACHABLE:
        return False
    job_id = str(record["job_id"])
    write_job(run_dir, {**record, "stop_requested": time.time()})
    if state.queued:
        return _scancel(job_id)
    return _scancel("--signal=USR2", job_id)


def cancel(record: Mapping[str, Any] | None) -> bool:
    """Cancel the job of a submission record (`scancel`) when it is provably that job (see `job_state`);
    whether it was."""
    state = job_state(record)
    return state is not None and state is not UNREACHABLE and _scancel(str(record["job_id"]))


def kill(run_dir: str | os.PathLike[str]) -> bool:
    """End the run's job now; the run shows "killed". False when its job is not in the queue.

    Slurm cancels a job with SIGTERM first (SIGKILL only after its KillWait), which the worker would
    answer with a checkpoint; so the request is recorded first, and the worker reads it and exits at
    once (`kill_requested`). False, as for `stop`, unless the job is provably the run's.
    """
    record = read_job(run_dir)
    state = job_state(record)
    if record is None or state is None or state is UNREACHABLE:
        return False
    job_id = str(record["job_id"])
    now = time.time()
    write_job(run_dir, {**record, "stop_requested": now, "kill_requested": now})
    return _scancel(job_id)


def kill_requested(run_dir: str | os.PathLike[str]) -> bool:
    """Whether `dtvg runs stop --kill` asked this submission to end now."""
    record = read_job(run_dir)
    return bool(record and record.get("kill_requested"))


def stop_requested(run_dir: str | os.PathLike[str]) -> bool:
    """Whether `dtvg runs stop` asked this submission to stop (a stop without it is a preemption)."""
    record = read_job(run_dir)
    return bool(record and record.get("stop_requested"))


def requeue(job_id: str) -> str | None:
    """Put the job back in the queue (`scontrol requeue`); None when done, else Slurm's error."""
    try:
        done = subprocess.run(
            ["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=_SQUEUE_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if done.returncode == 0 else (done.stderr.strip() or f"scontrol exited {done.returncode}")
