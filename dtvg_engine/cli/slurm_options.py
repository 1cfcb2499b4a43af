"""`--executor local|slurm` and the `--slurm-*` options of `dtvg run ...`, and submitting with them.

submitit is imported only once a command submits, so `dtvg` works without the `slurm` extra.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from dtvg_engine.errors import UserError
from dtvg_engine.slurm import DEFAULT_TIME, Resources, parse_options

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


def on_slurm(executor: str) -> bool:
    """Whether `--executor` asks for Slurm; `UserError` for anything but local or slurm."""
    if executor not in EXECUTORS:
        raise UserError(f"--executor {executor!r}: choose local or slurm")
    return executor == "slurm"


def changes(options: dict[str, Any]) -> dict[str, Any]:
    """What a command's `slurm_*` options set, for `Resources.override` (None: not given)."""
    return {
        "partition": options.get("slurm_partition"),
        "time": options.get("slurm_time"),
        "gpus": options.get("slurm_gpus"),
        "cpus": options.get("slurm_cpus"),
        "mem": options.get("slurm_mem"),
        "options": parse_options(options.get("slurm_option") or []),
        "setup": options.get("slurm_setup") or None,
    }


def resources(options: dict[str, Any], base: Resources | None = None) -> Resources:
    """The resources a command's `slurm_*` options ask for, over `base` (a pipeline's `[slurm]` table)."""
    return (base or Resources()).override(**changes(options))


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
