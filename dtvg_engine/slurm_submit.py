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
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError

from dtvg_engine.errors import UserError
from dtvg_engine.runs import slurm
from dtvg_engine.runs.history import History
from dtvg_engine.runs.runactions import check_action
from dtvg_engine.runs.runfolder import EVENTS, LOG, read_config
from dtvg_engine.runs.safefiles import open_fd
from dtvg_engine.runs.slurm import SUBMITIT_DIR, Resources
from dtvg_engine.studies.studyfile import load_experiment
from dtvg_engine.studies.studyprocess import record_pipeline_job


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
    fd = open_fd(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
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


def _executor(
    folder: Path, resources: Resources, name: str, parallel: int, **more: Any
) -> submitit.SlurmExecutor:
    """submitit's executor for one submission: these resources, at most `parallel` array tasks at once;
    `UserError` at once when Slurm's controller does not answer (sbatch would retry it for 10 s)."""
    try:
        executor = submitit.SlurmExecutor(folder=folder)
    except RuntimeError as exc:  # no srun: not a Slurm machine
        raise UserError(f"--executor slurm: {exc} (sbatch and srun must be on PATH)") from None
    slurm.check_controller()
    executor.update_parameters(
        job_name=name, array_parallelism=parallel, **resources.sbatch_parameters(), **more
    )
    return executor


def _submit(executor: submitit.SlurmExecutor, calls: list[Callable[[], Any]]) -> list[submitit.Job]:
    """Submit the calls as one job (one call) or one job array; `UserError` when sbatch refuses."""
    refused = io.StringIO()
    try:
        with contextlib.redirect_stderr(refused):  # submitit prints sbatch's complaint itself
            if len(calls) == 1:
                return [executor.submit(calls[0])]
            return executor.submit_array(calls)
    except (FailedJobError, OSError) as exc:
        lines = [line.strip() for line in (str(exc) or refused.getvalue()).splitlines()]
        reasons = [line for line in lines if line and not line.startswith('Try "sbatch --help"')]  # a hint
        raise UserError(f"sbatch refused the job: {reasons[-1] if reasons else repr(exc)}") from None


def submission_folder(runs_dir: Path) -> Path:
    """A new folder for one submission's submitit files, `<runs>/_slurm/<time>-<random>`."""
    return runs_dir.resolve() / SUBMITIT_DIR / f"{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def job_name(run_dirs: list[Path], study: str | None = None) -> str:
    """What `squeue` shows for the runs' job: one run's stage and label (`dtvg-stage1-rte`, from its id
    `<date>-<time>-stage1-rte`), else the study's name or the number of runs, and their stage
    (`dtvg-fewshot-stage2`, `dtvg-3-stage1-runs`)."""
    if len(run_dirs) == 1:
        return "dtvg-" + run_dirs[0].name.split("-", 2)[-1]
    stage = read_config(run_dirs[0]).get("stage", "")
    return f"dtvg-{study}-{stage}" if study else f"dtvg-{len(run_dirs)}-{stage}-runs"


def submit_runs(run_dirs: list[Path], resources: Resources, jobs: int, study: str | None = None) -> list[str]:
    """Submit runs (new, or stopped/killed/failed ones to resume): one job, or one array running at most
    `jobs` at a time (named after `study` when they are its). Each run's `slurm.json` records its job;
    return the job ids.

    On a refusal (a bad partition, too many GPUs, …) every run is left as it was before.
    """
    if not run_dirs:
        return []
    before = {run_dir: slurm.read_job(run_dir) for run_dir in run_dirs}
    for run_dir in run_dirs:  # until sbatch answers, the run is a Slurm run being submitted: pending
        slurm.write_job(run_dir, {"job_id": None, "submitted": time.time()})
    folder = submission_folder(run_dirs[0].parent)
    try:
        executor = _executor(folder, resources, job_name(run_dirs, study), jobs)
        submitted = _submit(executor, [SlurmRun(str(d)) for d in run_dirs])
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # `_slurm` itself goes when this was its first submission
            folder.parent.rmdir()
        for run_dir, record in before.items():
            if record is None:
                (run_dir / slurm.JOB_FILE).unlink(missing_ok=True)
            else:
                slurm.write_job(run_dir, record)
        raise
    for run_dir, job in zip(run_dirs, submitted, strict=True):
        old = before[run_dir] or {}
        earlier = [{"job_id": old["job_id"], "folder": old.get("folder")}] if old.get("job_id") else []
        slurm.write_job(
            run_dir,
            {
                "job_id": job.job_id,
                "folder": str(folder),
                "resources": asdict(resources),
                "submitted": time.time(),
                "previous_jobs": [*old.get("previous_jobs", []), *(e["job_id"] for e in earlier)],
                "previous_submissions": [*old.get("previous_submissions", []), *earlier],
            },
        )
        if (run_dir / EVENTS).exists():  # a resumed run: the index must not keep calling it stopped
            History(run_dir.parent).upsert(run_dir)
    return [job.job_id for job in submitted]


PIPELINE_TIME = "30:00"
"""Time limit of a pipeline's continuation job: it only plans, submits and writes the results."""


@dataclass
class PipelineOnSlurm:
    """A pipeline whose runs go to Slurm: each stage is one job array, and what remains of the pipeline
    is a job that starts once that array has ended and runs the (resumable) pipeline again from the
    next stage, so no process has to stay alive on the login node."""

    experiment: Path
    runs_dir: Path
    resources: Resources
    jobs: int | None = None
    """`--jobs` (None: the file's `jobs`): runs of an array at once."""
    data_dir: str | None = None
    """`--data-dir`, when given."""
    stage: int = 1
    """The first stage this pass may submit: 1, 2, or 3 (both stages were submitted: the results)."""

    def submit(self, run_dirs: list[Path], jobs: int) -> list[str]:
        """Submit one stage's runs as one job array, at most `jobs` at a time."""
        return submit_runs(run_dirs, self.resources, jobs, study=self.experiment.stem)

    def continue_after(self, job_ids: list[str]) -> str:
        """Submit the pipeline's next pass as a job that starts once these jobs have ended; its id."""
        after = replace(self, stage=self.stage + 1)
        small = Resources(
            partition=self.resources.partition,
            time=PIPELINE_TIME,
            options=self.resources.options,
            setup=self.resources.setup,
        )
        name = f"dtvg-pipeline-{self.experiment.stem}"
        dependency = "afterany:" + ":".join(job_ids)
        folder = submission_folder(self.runs_dir)  # it submits jobs itself: outside srun, as submitit advises
        executor = _executor(folder, small, name, 1, dependency=dependency, use_srun=False)
        job_id = _submit(executor, [after])[0].job_id
        study = load_experiment(self.experiment).name
        record_pipeline_job(self.runs_dir, study, {"job_id": job_id, "folder": str(folder)})
        return job_id

    def __call__(self) -> None:
        """The continuation job: run the pipeline's next pass and print what it did (to submitit's log).
        The last pass fails the job, as `dtvg run pipeline` exits 1, unless every run completed."""
        from dtvg_engine.studies.pipeline import run_pipeline, unfinished_line

        outcome = run_pipeline(self.experiment, self.runs_dir, self.jobs, self.data_dir, on_slurm=self)
        print("\n".join(outcome.report), flush=True)
        if outcome.table is not None:
            print(outcome.table.markdown, flush=True)
        unfinished = unfinished_line(outcome)
        if unfinished:
            print(unfinished, flush=True)
            raise SystemExit(1)


def resubmit(run_dir: Path, changes: dict[str, Any] | None = None) -> str:
    """Submit a stopped, killed or failed Slurm run again, with the resources it asked for but those
    `changes` gives (`Resources.override`); its job id."""
    record = slurm.read_job(run_dir)
    if record is None:
        raise UserError(f"run {run_dir.name} did not run on Slurm")
    slurm.check_controller()
    state = slurm.job_state(record)
    if state is slurm.UNREACHABLE:
        raise UserError(
            f"run {run_dir.name}: squeue cannot be asked about its job {record['job_id']}; is Slurm up?"
        )
    if state is not None:
        job_id = record["job_id"]
        raise UserError(f"run {run_dir.name} is Slurm job {job_id} already; see `squeue --job {job_id}`")
    check_action(run_dir, "resume")
    resources = Resources.from_table(record.get("resources") or {}, str(run_dir / slurm.JOB_FILE))
    return submit_runs([run_dir], resources.override(**(changes or {})), 1)[0]


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
