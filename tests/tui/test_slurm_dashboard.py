"""The dashboard on Slurm runs (issue 12): a queued and a running job, asked about in one squeue per scan.

Real jobs on the test cluster of `scripts/slurm-test-cluster.sh` (see tests/slurm_cluster.py): one
held in the queue until an hour from now, one whose worker trains on the cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from slurm_cluster import on_cluster, slurm_cluster, wait_for  # noqa: F401 - the fixture, used by on_cluster

from dtvg_engine.runs import slurm
from dtvg_engine.runs.runstatus import summarize
from dtvg_tui.app import DtvgApp
from dtvg_tui.runindex import RunIndex

from .conftest import settle
from .helpers import screen_text, sync

DTVG = str(Path(sys.executable).with_name("dtvg"))
TINY = ["--model", "tiny-llama", "--prompt-length", "4", "--k-shot", "16", "--max-eval", "16"]
TINY += ["--max-input-tokens", "64", "--batch-size", "4", "--device", "cpu", "--slurm-time", "10"]


def submit(runs: Path, data_dir: Path, *args: str) -> list[Path]:
    """Submit tiny rte stage-1 runs (`args`: tasks and options); their folders."""
    command = [DTVG, "run", "stage1", *args, *TINY, "--data-dir", str(data_dir), "--runs-dir", str(runs)]
    done = subprocess.run([*command, "--executor", "slurm"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [runs / run_id for run_id in done.stdout.split()]


@pytest.fixture
def jobs_cancelled():
    """Run folders whose Slurm jobs are cancelled when the test ends, whatever happened."""
    run_dirs: list[Path] = []
    yield run_dirs
    job_ids = [job for run_dir in run_dirs if (job := slurm.job_id_of(run_dir))]
    subprocess.run(["scancel", *job_ids], check=False)


@on_cluster
def test_each_scan_asks_squeue_once_for_every_slurm_run(runs_dir, data_dir, tmp_path, jobs_cancelled) -> None:
    jobs_cancelled += submit(runs_dir, data_dir, "rte", "mnli", "--slurm-option", "begin=now+1hour")
    index = RunIndex(runs_dir)
    index.scan()  # the first scan also writes each new run to the history index
    calls = tmp_path / "squeue-calls"
    shim = tmp_path / "bin"
    shim.mkdir()
    real = subprocess.run(["sh", "-c", "command -v squeue"], capture_output=True, text=True).stdout.strip()
    (shim / "squeue").write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec {real} "$@"\n')
    (shim / "squeue").chmod(0o755)
    path = os.environ["PATH"]
    os.environ["PATH"] = f"{shim}:{path}"
    try:
        for _ in range(3):
            index.scan()
    finally:
        os.environ["PATH"] = path
    lines = calls.read_text().splitlines()
    assert len(lines) == 3  # one per scan, for both runs
    assert all(slurm.job_id_of(run_dir) in lines[0] for run_dir in jobs_cancelled)
    assert {s.status for s in index.all()} == {"pending"}


@on_cluster
@sync
async def test_the_runs_table_shows_a_queued_and_a_running_slurm_run(
    runs_dir, data_dir, jobs_cancelled
) -> None:
    (queued,) = submit(runs_dir, data_dir, "rte", "--slurm-option", "begin=now+1hour")
    (running,) = submit(runs_dir, data_dir, "mnli", "--steps", "5000")
    jobs_cancelled += [queued, running]
    wait_for("the worker to start on the cluster", lambda: summarize(running).status == "running")
    app = DtvgApp(runs_dir, refresh_interval=0.2)
    async with app.run_test(size=(180, 30)) as pilot:
        await settle(pilot)
        text = screen_text(app)
    rows = {
        run_dir: next(line for line in text.splitlines() if run_dir.name in line)
        for run_dir in jobs_cancelled
    }
    assert "queued (BeginTime)" in rows[queued] and f"slurm {slurm.job_id_of(queued)}" in rows[queued]
    assert " running " in rows[running] and f"slurm {slurm.job_id_of(running)}" in rows[running]
