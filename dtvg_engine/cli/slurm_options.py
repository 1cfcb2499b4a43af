"""`--executor local|slurm` and the `--slurm-*` options of `dtvg run ...`, and submitting with them.

submitit is imported only once a command submits, so `dtvg` works without the `slurm` extra.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from dtvg_engine.cli.common import with_options
from dtvg_engine.errors import UserError
from dtvg_engine.runs.slurm import DEFAULT_TIME, Resources, check_controller, parse_options

EXECUTORS = ("local", "slurm")

Executor = Annotated[
    str,
    typer.Option(
        "--executor", help="local: workers on this machine; slurm: one Slurm job per run (submitit)."
    ),
]
Partition = Annotated[str | None, typer.Option("--slurm-partition", help="Slurm partition.")]
Time = Annotated[
    str | None,
    typer.Option(
        "--slurm-time",
        help=f"Time limit per run (sbatch --time; default {DEFAULT_TIME}): the job is requeued at the "
        "limit and the run goes on from its checkpoint.",
    ),
]
Gpus = Annotated[int | None, typer.Option("--slurm-gpus", help="GPUs per run (a DTVG run uses one).")]
Cpus = Annotated[int | None, typer.Option("--slurm-cpus", help="CPUs per run.")]
Mem = Annotated[str | None, typer.Option("--slurm-mem", help="Memory per run, e.g. 16G.")]
Options = Annotated[
    list[str] | None,
    typer.Option(
        "--slurm-option", help="Any other sbatch option, NAME=VALUE or NAME (repeatable): account=mylab."
    ),
]

Setup = Annotated[
    list[str] | None,
    typer.Option(
        "--slurm-setup",
        help="A shell line each job runs before the run (repeatable): 'module load cuda'.",
    ),
]


SLURM_OPTIONS: dict[str, tuple[Any, Any]] = {
    "slurm_partition": (Partition, None),
    "slurm_time": (Time, None),
    "slurm_gpus": (Gpus, None),
    "slurm_cpus": (Cpus, None),
    "slurm_mem": (Mem, None),
    "slurm_option": (Options, None),
    "slurm_setup": (Setup, None),
}
"""The `--slurm-*` options: parameter name → annotated type and default."""


def on_slurm(executor: str) -> bool:
    """Whether `--executor` asks for Slurm; `UserError` for anything but local or slurm."""
    if executor not in EXECUTORS:
        raise UserError(f"--executor {executor!r}: choose local or slurm")
    return executor == "slurm"


@dataclass(frozen=True)
class SlurmRequest:
    """What a command's `--executor` and `--slurm-*` options ask for."""

    executor: str | None
    """local or slurm (`--executor`); None where a run goes on where it ran (`run resume`)."""
    changes: dict[str, Any] = field(default_factory=dict)
    """What the `--slurm-*` options set, for `Resources.override` (None: not given)."""

    def resources(self, base: Resources | None = None) -> Resources | None:
        """The resources asked for over `base` (a pipeline's `[slurm]` table); None unless on Slurm."""
        return (base or Resources()).override(**self.changes) if self.executor == "slurm" else None


def _changes(options: dict[str, Any]) -> dict[str, Any]:
    """What the `slurm_*` options set, for `Resources.override` (None: not given)."""
    return {
        "partition": options["slurm_partition"],
        "time": options["slurm_time"],
        "gpus": options["slurm_gpus"],
        "cpus": options["slurm_cpus"],
        "mem": options["slurm_mem"],
        "options": parse_options(options["slurm_option"] or []),
        "setup": options["slurm_setup"] or None,
    }


def _executor_request(options: dict[str, Any]) -> SlurmRequest:
    """What `--executor` and the `--slurm-*` options ask for, checked before the command does anything:
    the options (a bad time limit, an option dtvg sets itself), then whether Slurm's controller answers,
    so a cluster that is down is said at once, not after the runs' data is read and sbatch's retries.
    A local run ignores the `--slurm-*` options."""
    if not on_slurm(options["executor"]):
        return SlurmRequest("local")
    request = SlurmRequest("slurm", _changes(options))
    request.resources()  # raises for a bad time limit, an option dtvg sets itself, …
    check_controller()
    return request


def with_slurm_options(executor: bool = True) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command the `--slurm-*` options, after its own, with `--executor` before them unless
    `executor` is False (`run resume`: a run goes on where it ran), and call it with what they ask for
    as `request`, a `SlurmRequest`."""
    if not executor:
        return with_options("request", SLURM_OPTIONS, lambda options: SlurmRequest(None, _changes(options)))
    return with_options("request", {"executor": (Executor, "local"), **SLURM_OPTIONS}, _executor_request)


def submitter() -> Any:
    """The `slurm_submit` module (it imports submitit); `UserError` saying how to install it."""
    try:
        from dtvg_engine import slurm_submit
    except ImportError as exc:
        install = "pip install 'dtvg-studio[slurm]'"
        raise UserError(f"--executor slurm needs submitit ({exc}): {install}") from None
    return slurm_submit


def submit_new(run_dirs: list[Path], resources: Resources, jobs: int) -> None:
    """Submit runs just created (one job each, an array when several); print their ids, like --detach.

    When sbatch refuses, the runs are removed again: nothing half-made is left behind.
    """
    try:
        job_ids = submitter().submit_runs(run_dirs, resources, jobs)
    except UserError:
        for run_dir in run_dirs:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    for run_dir, job_id in zip(run_dirs, job_ids, strict=True):
        print(run_dir.name)
        print(f"{run_dir.name}: Slurm job {job_id}", file=sys.stderr)
