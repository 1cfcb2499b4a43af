"""Slurm as an executor (issue 12): resources, the status of a Slurm run, and runs on a real cluster.

The tests marked `slurm` submit to the single-node cluster of `scripts/slurm-test-cluster.sh`
(see `slurm_cluster.py`): a run submitted and completed, a pipeline as job arrays with its dependent
stage, stop and resume, a preemption that requeues the job and goes on from the checkpoint, a job
Slurm lost. The others need no cluster.
"""

from __future__ import annotations

import subprocess

import pytest
from slurm_cluster import slurm_cluster, wait_for  # noqa: F401 - the fixture, used by name

from dtvg_engine import slurm
from dtvg_engine.errors import UserError
from dtvg_engine.events import RunState, event_from_dict
from dtvg_engine.slurm import Resources, parse_options, time_minutes

# ----- resources -----


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("90", 90), ("1:30", 2), ("1:30:00", 90), ("2-00:00:00", 2880), ("1-12", 2160), ("0:0:59", 1)],
)
def test_time_limits_read_as_sbatch_reads_them(text: str, minutes: int) -> None:
    assert time_minutes(text) == minutes


@pytest.mark.parametrize("text", ["", "1h", "1:2:3:4", "-5", "0"])
def test_bad_time_limits_are_refused(text: str) -> None:
    with pytest.raises(UserError, match="slurm time"):
        time_minutes(text)


def test_pass_through_options_become_sbatch_parameters() -> None:
    options = parse_options(["account=lab", "--qos=high", "exclusive"])
    assert options == {"account": "lab", "qos": "high", "exclusive": ""}
    params = Resources(partition="gpu", time="1:00:00", gpus=1, cpus=4, mem="16G", options=options)
    sbatch = params.sbatch_parameters()
    assert sbatch["partition"] == "gpu" and sbatch["time"] == 60 and sbatch["gpus_per_node"] == 1
    assert sbatch["cpus_per_task"] == 4 and sbatch["mem"] == "16G"
    assert sbatch["additional_parameters"] == {
        "requeue": True,
        "account": "lab",
        "qos": "high",
        "exclusive": True,
    }


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"partition": "gpu", "queue": "x"}, "unknown key"),
        ({"gpus": "one"}, "gpus must be a whole number"),
        ({"time": "soon"}, "slurm time"),
        ({"options": {"output": "x.log"}}, "set by dtvg itself"),
        ({"options": "account=lab"}, "'options' must be a table"),
    ],
)
def test_bad_slurm_tables_are_one_line_errors(table: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        Resources.from_table(table, "study.toml")


def test_bad_option_names_are_refused() -> None:
    with pytest.raises(UserError, match="NAME=VALUE"):
        parse_options(["=lab"])


# ----- the status of a Slurm run -----


def started(job_id: str) -> dict:
    fields = {"run_id": "r", "stage": "stage1", "method": "pt", "pid": 1, "config": {}, "task": "rte"}
    return {"type": "run_started", **fields, "executor": "slurm", "job_id": job_id, "host": "node1"}


def finished(status: str) -> dict:
    return {"type": "run_finished", "status": status, "summary": {}, "error": None}


RUNNING = slurm.JobState("RUNNING", "None")
QUEUED = slurm.JobState("PENDING", "Priority")


@pytest.mark.parametrize(
    ("lifecycle", "job_id", "state", "status"),
    [
        ([], None, None, "pending"),  # being submitted: sbatch has not answered yet
        ([], "7", QUEUED, "pending"),
        ([started("3"), finished("stopped")], "7", QUEUED, "pending"),  # resubmitted, waiting
        ([], "7", RUNNING, "pending"),  # the job started, its worker not yet
        ([started("3"), finished("stopped")], "7", RUNNING, "pending"),
        ([started("3")], "7", RUNNING, "pending"),  # an older job's segment does not count
        ([started("7")], "7", RUNNING, "running"),
        ([started("7"), finished("completed")], "7", RUNNING, "completed"),  # done, the job ending
        ([started("7")], "7", QUEUED, "pending"),  # preempted and requeued
        ([started("7")], "7", None, "killed"),  # lost: cancelled, timed out, node failure
        ([], "7", None, "killed"),  # cancelled before it ever started
        ([started("7"), finished("completed")], "7", None, "completed"),
        ([started("3"), finished("stopped")], "7", None, "stopped"),  # resubmitted, cancelled in the queue
        ([started("7")], "7", slurm.UNREACHABLE, "running"),  # squeue failed: not taken for lost
    ],
)
def test_a_slurm_run_status_comes_from_its_events_and_the_queue(lifecycle, job_id, state, status) -> None:
    events = RunState()
    events.feed(event_from_dict({"v": 1, "time": t, **e}) for t, e in enumerate(lifecycle, 1))
    assert slurm.run_status(events, job_id, state) == status


def test_queue_states_read_as_the_dashboard_shows_them() -> None:
    assert QUEUED.describe() == "queued (Priority)"
    assert slurm.JobState("PENDING", "JobArrayTaskLimit").describe() == "queued (JobArrayTaskLimit)"
    assert RUNNING.describe() == "running"
    assert slurm.UNREACHABLE.describe() == "unknown (squeue failed)"


def test_without_squeue_a_job_is_unknown_not_lost(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no squeue anywhere
    assert slurm.squeue(["7"]) is None
    assert slurm.Queue(["7"]).get("7") is slurm.UNREACHABLE


def test_the_job_a_process_runs_in_names_array_tasks_as_squeue_does(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    assert slurm.job_from_environment() is None
    monkeypatch.setenv("SLURM_JOB_ID", "15")
    assert slurm.job_from_environment() == "15"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "12")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert slurm.job_from_environment() == "12_3"


# ----- the real cluster -----


def sbatch(*args: str) -> str:
    done = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, check=True)
    return done.stdout.strip().split(";")[0]


@pytest.mark.slurm
def test_one_squeue_call_answers_for_queued_running_and_forgotten_jobs(slurm_cluster, tmp_path) -> None:  # noqa: F811
    out = f"--output={tmp_path}/%j.out"
    running = sbatch(out, "--wrap", "sleep 60")
    queued = sbatch(out, "--begin=now+1hour", "--wrap", "true")
    try:
        wait_for("the job to run", lambda: slurm.Queue([running]).get(running).state == "RUNNING", 30)
        queue = slurm.Queue([running, queued, "999999"])
        assert queue.get(running).describe() == "running"
        assert queue.get(queued).describe() == "queued (BeginTime)"
        assert queue.get("999999") is None  # never heard of: left the queue
        assert slurm.squeue(["999999"]) == {}  # squeue fails on one unknown id; that means "gone"
    finally:
        subprocess.run(["scancel", running, queued], check=False)
    wait_for("the cancelled jobs to leave the queue", lambda: slurm.squeue([running, queued]) == {}, 30)
