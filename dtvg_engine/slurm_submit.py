"""Submitting runs to Slurm through submitit: one job per run, one job array per batch of runs.

Imported only by the commands that submit (and by the jobs themselves), never by the dashboard.
What a job runs is `SlurmRun`: the ordinary worker on the run's folder, its output appended to the
run's worker.log. Runs submitted together (a pipeline stage, `dtvg run stage1 a b c`) form one job
array that runs at most `jobs` of them at a time. submitit keeps its own files (the sbatch script, the
pickled call, its log) in a folder per submission under `<runs>/_slurm/`, so the job ids a fresh
cluster hands out again never meet an older job's files; each run's `slurm.json` names its folder.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError

from dtvg_engine import slurm
from dtvg_engine.errors import UserError
from dtvg_engine.history import History
from dtvg_engine.runfolder import EVENTS, LOG, check_action

SUBMITIT_DIR = "_slurm"
"""Under the runs directory: one folder of submitit's files per submission."""

DEFAULT_TIME = "4:00:00"
"""Time limit of a run's job unless told: a run that needs longer is requeued at the limit and goes on."""

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

    def __post_init__(self) -> None:
        time_minutes(self.time)
        for name, value in (("gpus", self.gpus), ("cpus", self.cpus)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise UserError(f"slurm {name} must be a whole number ≥ 0 (got {value!r})")
        refused = sorted(set(self.options) & REFUSED_OPTIONS)
        if refused:
            raise UserError(f"slurm option(s) {', '.join(refused)} are set by dtvg itself; leave them out")

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str) -> Resources:
        """Resources from a pipeline's `[slurm]` table (or a run's record); `where` names it in errors."""
        unknown = sorted(set(table) - {*RESOURCE_KEYS, "options"})
        if unknown:
            allowed = ", ".join((*RESOURCE_KEYS, "options"))
            raise UserError(f"{where}: unknown key(s) {', '.join(unknown)} in [slurm]; allowed: {allowed}")
        options = table.get("options", {})
        if not isinstance(options, Mapping):
            raise UserError(f"{where}: 'options' must be a table of sbatch option = value")
        values = {key: table[key] for key in RESOURCE_KEYS if table.get(key) is not None}
        for key in ("partition", "mem", "time"):
            if key in values:
                values[key] = str(values[key])
        return cls(**values, options={str(k): "" if v is True else str(v) for k, v in options.items()})

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
        return params


class SlurmRun:
    """What a run's Slurm job calls: the worker on the run folder, as a local launch would run it."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir

    def __call__(self) -> int:
        from dtvg_engine import worker

        with _output_to(Path(self.run_dir) / LOG):
            return worker.main([self.run_dir], job_id=slurm.job_from_environment())


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors 1 and 2) to the end of `path`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


def _executor(folder: Path, resources: Resources, name: str, parallel: int) -> submitit.SlurmExecutor:
    try:
        executor = submitit.SlurmExecutor(folder=folder)
    except RuntimeError as exc:  # no srun: not a Slurm machine
        raise UserError(f"--executor slurm: {exc} (sbatch and srun must be on PATH)") from None
    executor.update_parameters(job_name=name, array_parallelism=parallel, **resources.sbatch_parameters())
    return executor


def _submit(calls: list[Callable[[], Any]], folder: Path, resources: Resources, name: str, parallel: int):
    """Submit the calls as one job (one call) or one job array; return submitit's jobs."""
    executor = _executor(folder, resources, name, parallel)
    refused = io.StringIO()
    try:
        with contextlib.redirect_stderr(refused):  # submitit prints sbatch's complaint itself
            if len(calls) == 1:
                return [executor.submit(calls[0])]
            return executor.submit_array(calls)
    except (FailedJobError, OSError) as exc:
        reason = (str(exc) or refused.getvalue()).strip().splitlines()
        raise UserError(f"sbatch refused the job: {reason[-1] if reason else exc!r}") from None


def submission_folder(runs_dir: Path) -> Path:
    """A new folder for one submission's submitit files, `<runs>/_slurm/<time>-<random>`."""
    return runs_dir / SUBMITIT_DIR / f"{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def submit_runs(run_dirs: list[Path], resources: Resources, jobs: int) -> list[str]:
    """Submit runs (new, or stopped/killed/failed ones to resume): one job, or one array running at most
    `jobs` at a time. Each run's `slurm.json` records its job; return the job ids.

    On a refusal (a bad partition, too many GPUs, …) every run is left as it was before.
    """
    if not run_dirs:
        return []
    before = {run_dir: slurm.read_job(run_dir) for run_dir in run_dirs}
    for run_dir in run_dirs:  # until sbatch answers, the run is a Slurm run being submitted: pending
        slurm.write_job(run_dir, {"job_id": None, "submitted": time.time()})
    folder = submission_folder(run_dirs[0].parent)
    name = f"dtvg-{run_dirs[0].name}" if len(run_dirs) == 1 else f"dtvg-{len(run_dirs)}-runs"
    try:
        submitted = _submit([SlurmRun(str(d)) for d in run_dirs], folder, resources, name, jobs)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        for run_dir, record in before.items():
            if record is None:
                (run_dir / slurm.JOB_FILE).unlink(missing_ok=True)
            else:
                slurm.write_job(run_dir, record)
        raise
    for run_dir, job in zip(run_dirs, submitted, strict=True):
        old = before[run_dir] or {}
        previous = [*old.get("previous_jobs", []), *([old["job_id"]] if old.get("job_id") else [])]
        slurm.write_job(
            run_dir,
            {
                "job_id": job.job_id,
                "folder": str(folder),
                "resources": asdict(resources),
                "submitted": time.time(),
                "previous_jobs": previous,
            },
        )
        if (run_dir / EVENTS).exists():  # a resumed run: the index must not keep calling it stopped
            History(run_dir.parent).upsert(run_dir)
    return [job.job_id for job in submitted]


def resubmit(run_dir: Path) -> str:
    """Submit a stopped, killed or failed Slurm run again, with the resources it asked for; its job id."""
    record = slurm.read_job(run_dir)
    if record is None:
        raise UserError(f"run {run_dir.name} did not run on Slurm")
    job_id = slurm.active_job(run_dir)
    if job_id:
        raise UserError(f"run {run_dir.name} is Slurm job {job_id} already; see `squeue --job {job_id}`")
    check_action(run_dir, "resume")
    resources = Resources.from_table(record.get("resources") or {}, str(run_dir / slurm.JOB_FILE))
    return submit_runs([run_dir], resources, 1)[0]


def main(argv: list[str] | None = None) -> int:
    """`python -m dtvg_engine.slurm_submit RUN_DIR`: resubmit a Slurm run and print its job id (the
    dashboard's resume runs this, so that it never imports submitit)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m dtvg_engine.slurm_submit RUN_DIR", file=sys.stderr)
        return 2
    try:
        print(resubmit(Path(args[0])))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
