"""Slurm as an executor (issue 12): resources, the status of a Slurm run, and runs on a real cluster.

The tests marked `slurm` submit to the single-node cluster of `scripts/slurm-test-cluster.sh`
(see `slurm_cluster.py`): a run submitted and completed, a pipeline as job arrays with its dependent
stage, stop and resume, a preemption that requeues the job and goes on from the checkpoint, a job
Slurm lost. The others need no cluster.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import assert_bad_input, dtvg
from slurm_cluster import (  # noqa: F401 - slurm_cluster: the fixture, used by on_cluster
    on_cluster,
    restart_cluster,
    slurm_cluster,
    wait_for,
)

from dtvg_engine import config as configs
from dtvg_engine.errors import UserError
from dtvg_engine.runs import slurm
from dtvg_engine.runs.events import Log, RunFinished, RunStarted, RunState, Step, event_from_dict, read_events
from dtvg_engine.runs.runfolder import EVENTS, LOG, TPV, create_run, list_run_dirs
from dtvg_engine.runs.runstatus import RunSummary, summarize
from dtvg_engine.runs.slurm import Resources, parse_options, time_minutes
from dtvg_engine.studies.pipeline import results_paths

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
        ({"setup": "module load cuda"}, "setup must be a list of shell lines"),
    ],
)
def test_bad_slurm_tables_are_one_line_errors(table: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        Resources.from_table(table, "study.toml")


def test_setup_lines_go_to_the_job_script_before_the_run() -> None:
    resources = Resources.from_table({"setup": ["module load cuda", "source /shared/venv/bin/activate"]}, "x")
    assert resources.sbatch_parameters()["setup"] == ["module load cuda", "source /shared/venv/bin/activate"]
    assert "setup" not in Resources().sbatch_parameters()


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


# ----- the worker as a Slurm job runs it -----


def test_a_stop_on_record_when_the_job_starts_stops_the_run_at_once(runs_dir, data_dir) -> None:
    """`dtvg runs stop` signals a job that squeue shows running, whose worker may not listen yet (the
    job is starting, or starting again after a requeue, under the same id); submitit takes that early
    signal for a preemption and requeues the job. The worker that starts then must still stop."""
    tiny = {"model": "tiny-llama", "prompt_length": 4, "k_shot": 16, "max_eval": 16, "device": "cpu"}
    config = configs.stage1_config("rte", steps=STEPS, data_dir=str(data_dir), **tiny)
    run_dir = create_run(runs_dir, "stage1", "rte", config)
    folder = runs_dir / slurm.SUBMITIT_DIR / "20260101-000000-abcdef"
    slurm.write_job(run_dir, {"job_id": "7", "folder": str(folder), "stop_requested": time.time()})
    job = "import sys; from dtvg_engine.slurm_submit import SlurmRun; sys.exit(SlurmRun(sys.argv[1])())"
    done = subprocess.run(
        [sys.executable, "-c", job, str(run_dir)],
        env={**os.environ, "SLURM_JOB_ID": "7"},  # what Slurm gives the job's process
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (run_dir / LOG).read_text()[-2000:]
    events = read_events(run_dir / EVENTS)
    assert [e.job_id for e in events if isinstance(e, RunStarted)] == ["7"]
    assert [(e.status, e.summary["steps"]) for e in events if isinstance(e, RunFinished)] == [("stopped", 0)]
    assert not [e for e in events if isinstance(e, Step)]


# ----- the real cluster -----


def sbatch(*args: str) -> str:
    done = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, check=True)
    return done.stdout.strip().split(";")[0]


@on_cluster
def test_one_squeue_call_answers_for_queued_running_and_forgotten_jobs(tmp_path) -> None:
    out = f"--output={tmp_path}/%j.out"
    running = sbatch(out, "--wrap", "sleep 60")
    queued = sbatch(out, "--begin=now+1hour", "--wrap", "true")
    try:
        wait_for("the job to run", lambda: slurm.Queue([running]).get(running).state == "RUNNING", 180)
        queue = slurm.Queue([running, queued, "999999"])
        assert queue.get(running).describe() == "running"
        assert queue.get(queued).describe() == "queued (BeginTime)"
        assert queue.get("999999") is None  # never heard of: left the queue
        assert slurm.squeue(["999999"]) == {}  # squeue fails on one unknown id; that means "gone"
    finally:
        subprocess.run(["scancel", running, queued], check=False)
    wait_for("the cancelled jobs to leave the queue", lambda: slurm.squeue([running, queued]) == {}, 30)


# ----- runs, pipelines, stop, resume and preemption on the cluster -----

TINY = ["--model", "tiny-llama", "--prompt-length", "4", "--k-shot", "16", "--max-eval", "16"]
TINY += ["--max-input-tokens", "64", "--batch-size", "4", "--device", "cpu"]
SETTLED = ("completed", "failed", "stopped", "killed")
STEPS = 60
"""Steps of a run that is stopped, preempted or killed as soon as its worker starts: enough that what
is done to it lands long before it could finish (loading takes seconds, then each step a moment)."""


def submit_stage1(runs_dir: Path, data_dir: Path, steps: int, *more: str) -> Path:
    """One tiny rte stage-1 run submitted with `dtvg run stage1 --executor slurm`; its folder."""
    result = dtvg(
        "run", "stage1", "rte", *TINY, "--steps", steps, "--eval-every", max(1, steps // 2),
        "--data-dir", data_dir, "--runs-dir", runs_dir, "--executor", "slurm", "--slurm-time", "10", *more,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (run_id,) = result.stdout.split()
    return runs_dir / run_id


def settled(run_dir: Path) -> RunSummary | None:
    """The run's summary once it finished (or was stopped or killed) and its job left the queue."""
    summary = summarize(run_dir)
    return summary if summary.status in SETTLED and summary.slurm_state is None else None


def running(run_dir: Path) -> RunSummary | None:
    """The run's summary once its worker started on the cluster (it loads, then trains a step a moment:
    what is done to it now lands before it could finish)."""
    summary = summarize(run_dir)
    return summary if summary.status == "running" else None


def job_names(job_ids: list[str]) -> set[str]:
    """The names `squeue` shows for these jobs."""
    command = ["squeue", "--noheader", "--array", "--jobs", ",".join(job_ids), "--format", "%j"]
    return set(subprocess.run(command, capture_output=True, text=True, check=True).stdout.split())


def lifecycle(run_dir: Path) -> list:
    return [e for e in read_events(run_dir / EVENTS) if isinstance(e, RunStarted | RunFinished | Log)]


@on_cluster
def test_a_run_submitted_to_slurm_completes_and_records_where_it_ran(runs_dir, data_dir) -> None:
    run_dir = submit_stage1(runs_dir, data_dir, 2, "--slurm-cpus", "1", "--slurm-setup", "echo set-up-first")
    record = slurm.read_job(run_dir)
    job_id = record["job_id"]
    assert record["resources"]["time"] == "10" and record["resources"]["cpus"] == 1
    summary = wait_for("the run to complete", lambda: settled(run_dir))
    assert summary.status == "completed", (run_dir / LOG).read_text()[-2000:]
    assert slurm.log_path(record).read_text().startswith("set-up-first\n")  # the setup line ran first
    (start,) = [e for e in lifecycle(run_dir) if isinstance(e, RunStarted)]
    assert (start.executor, start.job_id, start.host) == ("slurm", job_id, socket.gethostname())
    assert (run_dir / TPV).is_file()
    (doc,) = json.loads(dtvg("runs", "list", "--json", "--runs-dir", runs_dir).stdout)
    assert (doc["executor"], doc["job_id"], doc["status"]) == ("slurm", job_id, "completed")
    # submitit's own files live in a folder of this submission, which the run's record names
    assert (Path(record["folder"]) / f"{job_id}_submitted.pkl").is_file()


@on_cluster
@pytest.mark.parametrize(
    ("asked", "reason"),
    [
        (["--slurm-gpus", "8"], "sbatch: error: Invalid generic resource"),  # the test node has no GPU
        (["--slurm-option", "colour=blue"], "sbatch: unrecognized option '--colour=blue'"),  # not the hint
    ],
)
def test_sbatch_refusing_a_run_is_one_line_and_leaves_no_run(runs_dir, data_dir, asked, reason) -> None:
    result = dtvg(
        "run", "stage1", "rte", *TINY, "--data-dir", data_dir, "--runs-dir", runs_dir,
        "--executor", "slurm", *asked,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(f"error: sbatch refused the job: {reason}"), result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert list_run_dirs(runs_dir) == []


def test_bad_executor_and_slurm_options_are_refused_before_any_run(runs_dir, data_dir) -> None:
    for args, message in (
        (["--executor", "cloud"], "choose local or slurm"),
        (["--executor", "slurm", "--slurm-time", "1h"], "slurm time"),
        (["--executor", "slurm", "--slurm-option", "output=x.log"], "set by dtvg itself"),
    ):
        result = dtvg("run", "stage1", "rte", *TINY, "--data-dir", data_dir, "--runs-dir", runs_dir, *args)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert list_run_dirs(runs_dir) == []


def controller_down(tmp_path: Path) -> dict[str, str]:
    """An environment whose Slurm is the test cluster with its controller down, as Slurm's commands see
    it: the cluster's slurm.conf, its controller moved to a port nothing listens on (the shared cluster
    goes on serving the other tests)."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    conf = Path(os.environ["SLURM_CONF"]).read_text()
    down = tmp_path / "down.conf"
    down.write_text(re.sub(r"(?m)^SlurmctldPort=\d+$", f"SlurmctldPort={port}", conf))
    return {"SLURM_CONF": str(down)}


@on_cluster
def test_a_cluster_that_is_down_is_said_at_once_and_nothing_is_left(runs_dir, data_dir, tmp_path) -> None:
    down = controller_down(tmp_path)
    held = submit_stage1(runs_dir, data_dir, 2, "--slurm-option", "begin=now+1hour")  # on the live cluster
    study = tmp_path / "downstudy.toml"
    study.write_text(
        f'model = "tiny-llama"\nprompt_length = 4\ndevice = "cpu"\ndata_dir = "{data_dir}"\n'
        'sources = ["mnli"]\ntargets = ["rte"]\nmethods = ["pt"]\n'
    )
    try:
        for command in (
            ["run", "stage1", "rte", *TINY, "--data-dir", data_dir, "--executor", "slurm"],
            ["run", "pipeline", study, "--executor", "slurm"],
            ["run", "resume", held.name],
        ):
            started = time.monotonic()
            result = dtvg(*command, "--runs-dir", runs_dir, env=down)
            took = time.monotonic() - started
            assert took < 5, f"{command[:2]} took {took:.1f} s"  # sbatch alone retries for about 10 s
            line = assert_bad_input(result)
            assert line.startswith("error: Slurm's controller does not answer (Slurmctld(primary) at ")
            assert "is DOWN): start it" in line and "SLURM_CONF" in line and "nothing was submitted" in line
            assert list_run_dirs(runs_dir) == [held] and not (runs_dir / "_pipelines").exists()
        started = time.monotonic()
        listed = dtvg("runs", "list", "--json", "--runs-dir", runs_dir, env=down)
        assert listed.returncode == 0 and time.monotonic() - started < 5, listed.stderr
        (doc,) = json.loads(listed.stdout)
        assert doc["slurm_state"] == "unknown (squeue failed)"  # not taken for lost
        assert summarize(held).slurm_state == "queued (BeginTime)"  # the live cluster still has it
    finally:
        subprocess.run(["scancel", slurm.read_job(held)["job_id"]], check=False)


@on_cluster
def test_stop_ends_the_job_stopped_and_resume_resubmits_it(runs_dir, data_dir) -> None:
    run_dir = submit_stage1(runs_dir, data_dir, STEPS)
    first_job = slurm.read_job(run_dir)["job_id"]
    wait_for("the worker to start", lambda: running(run_dir), every=0.1)
    result = dtvg("runs", "stop", run_dir.name, "--runs-dir", runs_dir)
    assert result.returncode == 0, result.stderr
    summary_at_stop = wait_for("the run to stop", lambda: settled(run_dir))
    assert summary_at_stop.status == "stopped" and summary_at_stop.step < STEPS
    assert slurm.stop_requested(run_dir)  # so the worker did not take it for a preemption

    result = dtvg("run", "resume", run_dir.name, "--runs-dir", runs_dir)
    assert result.returncode == 0, result.stderr
    record = slurm.read_job(run_dir)
    assert record["job_id"] != first_job and record["previous_jobs"] == [first_job]
    assert not slurm.stop_requested(run_dir)
    summary = wait_for("the resumed run to complete", lambda: settled(run_dir))
    assert summary.status == "completed" and summary.step == STEPS
    events = lifecycle(run_dir)
    assert [e.job_id for e in events if isinstance(e, RunStarted)] == [first_job, record["job_id"]]
    assert [e.status for e in events if isinstance(e, RunFinished)] == ["stopped", "completed"]
    resumed = f"resumed from checkpoint at step {summary_at_stop.step}"
    assert any(isinstance(e, Log) and e.message == resumed for e in events)


@on_cluster
def test_a_preempted_job_is_requeued_and_goes_on_from_its_checkpoint(runs_dir, data_dir) -> None:
    run_dir = submit_stage1(runs_dir, data_dir, STEPS)
    job_id = slurm.read_job(run_dir)["job_id"]
    wait_for("the worker to start", lambda: running(run_dir), every=0.1)
    # what Slurm sends a job it preempts with a grace time (PreemptParameters=send_user_signal): the
    # job's warning signal, USR2, then SIGTERM
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    subprocess.run(["scancel", "--signal=TERM", job_id], check=True)
    seen = set()

    def done() -> RunSummary | None:
        summary = summarize(run_dir)
        seen.add(summary.status)
        return settled(run_dir)

    summary = wait_for("the requeued job to complete the run", done, every=0.3)
    assert summary.status == "completed" and summary.step == STEPS
    assert "pending" in seen  # requeued: waiting in the queue, not stopped, not killed
    events = lifecycle(run_dir)
    assert [e.job_id for e in events if isinstance(e, RunStarted)] == [job_id, job_id]  # the same job
    assert [e.status for e in events if isinstance(e, RunFinished)] == ["completed"]
    (requeued,) = [e for e in events if isinstance(e, Log) and "requeueing" in e.message]
    step = int(requeued.message.split(" at step ")[1].split(";")[0])
    assert step < STEPS
    assert any(isinstance(e, Log) and e.message == f"resumed from checkpoint at step {step}" for e in events)


@on_cluster
def test_a_job_slurm_lost_shows_killed_and_resumes(runs_dir, data_dir) -> None:
    run_dir = submit_stage1(runs_dir, data_dir, STEPS)
    wait_for("the worker to start", lambda: running(run_dir), every=0.1)
    result = dtvg("runs", "stop", run_dir.name, "--kill", "--runs-dir", runs_dir)  # gone, without a word
    assert result.returncode == 0, result.stderr
    assert wait_for("the job to leave the queue", lambda: settled(run_dir)).status == "killed"
    # Slurm cancels with SIGTERM first: the worker must end at once, not checkpoint and requeue the job
    assert not [e for e in lifecycle(run_dir) if isinstance(e, RunFinished) or "requeue" in str(e)]
    (doc,) = json.loads(dtvg("runs", "list", "--json", "--runs-dir", runs_dir).stdout)
    assert doc["status"] == "killed"
    # with no Slurm to ask, resume says so rather than take the run's job for live
    down = dtvg(
        "run", "resume", run_dir.name, "--runs-dir", runs_dir, env={"SLURM_CONF": str(runs_dir / "no.conf")}
    )
    assert "controller does not answer (SLURM_CONF names" in assert_bad_input(down)
    result = dtvg("run", "resume", run_dir.name, "--runs-dir", runs_dir)
    assert result.returncode == 0, result.stderr
    assert wait_for("the resumed run to complete", lambda: settled(run_dir)).status == "completed"


@on_cluster
def test_a_pipeline_is_job_arrays_with_its_dependent_stage(runs_dir, data_dir, tmp_path) -> None:
    study = tmp_path / "onslurm.toml"
    tiny = "steps = 2\neval_every = 1\nmax_eval = 16\nk_shot = 16\nmax_input_tokens = 64\n"
    study.write_text(
        f'model = "tiny-llama"\nprompt_length = 4\ndevice = "cpu"\ndata_dir = "{data_dir}"\n'
        'sources = ["mnli"]\ntargets = ["rte"]\nmethods = ["dtvg"]\njobs = 1\n'
        f'[stage1]\n{tiny}[stage2]\n{tiny}[slurm]\ntime = "10"\n'
    )
    result = dtvg("run", "pipeline", study, "--executor", "slurm", "--runs-dir", runs_dir)
    assert result.returncode == 0, result.stdout + result.stderr  # returns at once: the jobs go on
    stage1 = list_run_dirs(runs_dir)
    assert len(stage1) == 2 and all(summarize(d).stage == "stage1" for d in stage1)
    jobs = [slurm.read_job(d)["job_id"] for d in stage1]
    array = {job.split("_")[0] for job in jobs}
    assert len(array) == 1 and sorted(job.split("_")[1] for job in jobs) == ["0", "1"]  # one array

    # at most `jobs` = 1 at a time: while one runs, the other waits for the array's limit
    def one_waits() -> bool:
        states = {summarize(d).slurm_state for d in stage1}
        return "queued (JobArrayTaskLimit)" in states and "running" in states

    wait_for("one task running, the other held by the array's limit", one_waits, timeout=240, every=0.2)
    md, _ = results_paths(runs_dir, "onslurm")
    wait_for("the last pipeline job to write the results", md.is_file, timeout=420)
    (stage2,) = [d for d in list_run_dirs(runs_dir) if d not in stage1]
    assert summarize(stage2).status == "completed" and summarize(stage2).method == "dtvg"
    ended = max(summarize(d).ended for d in stage1)
    assert slurm.read_job(stage2)["submitted"] > ended  # stage 2 was submitted once stage 1 had ended
    assert slurm.read_job(stage2)["job_id"].split("_")[0] not in array
    assert "| target | dtvg | constant |" in md.read_text()  # the study's table, as the report writes it
    (row,) = [line for line in md.read_text().splitlines() if line.startswith("| rte (")]
    assert "—" not in row


@on_cluster
def test_a_pipeline_run_again_leaves_its_queued_jobs_alone(runs_dir, data_dir, tmp_path) -> None:
    study = tmp_path / "heldstudy.toml"
    study.write_text(
        f'model = "tiny-llama"\nprompt_length = 4\ndevice = "cpu"\ndata_dir = "{data_dir}"\n'
        'sources = ["mnli"]\ntargets = ["rte"]\nmethods = ["pt"]\n'
        '[slurm]\ntime = "10"\noptions = { begin = "now+1hour" }\n'  # held in the queue
    )
    try:
        first = dtvg("run", "pipeline", study, "--executor", "slurm", "--runs-dir", runs_dir)
        assert first.returncode == 0, first.stderr
        (run_dir,) = list_run_dirs(runs_dir)
        job_id = slurm.read_job(run_dir)["job_id"]
        again = dtvg("run", "pipeline", study, "--executor", "slurm", "--runs-dir", runs_dir)
        assert again.returncode == 0, again.stderr
        assert "is pending in another process; not started twice" in again.stdout
        assert list_run_dirs(runs_dir) == [run_dir] and slurm.read_job(run_dir)["job_id"] == job_id
        assert summarize(run_dir).slurm_state == "queued (BeginTime)"
    finally:
        subprocess.run(["scancel", "--name", "dtvg-pipeline-heldstudy"], check=False)
        subprocess.run(["scancel", *[j for d in list_run_dirs(runs_dir) if (j := slurm.job_id_of(d))]])


@on_cluster
def test_scancel_ends_a_running_run_killed_and_does_not_requeue_it(runs_dir, data_dir) -> None:
    run_dir = submit_stage1(runs_dir, data_dir, STEPS)
    job_id = slurm.read_job(run_dir)["job_id"]
    # training, not loading: the checkpoint at the next step lands well within Slurm's KillWait
    wait_for("the first step", lambda: summarize(run_dir).step >= 1, every=0.1)
    assert job_names([job_id]) == {"dtvg-stage1-rte"}  # in squeue, the run's stage and task
    subprocess.run(["scancel", job_id], check=True)  # SIGTERM, without Slurm's warning: not a preemption
    summary = wait_for("the job to leave the queue", lambda: settled(run_dir))
    assert summary.status == "killed" and summary.step < STEPS
    events = lifecycle(run_dir)
    assert [e.job_id for e in events if isinstance(e, RunStarted)] == [job_id]  # not started again
    assert not [e for e in events if isinstance(e, RunFinished) or "requeue" in str(e)]
    assert any(isinstance(e, Log) and f"Slurm ended job {job_id}" in e.message for e in events)
    # why it ended is in the job's Slurm log, which `runs show` names and shows
    shown = dtvg("runs", "show", run_dir.name, "--runs-dir", runs_dir).stdout
    assert str(slurm.log_path(slurm.read_job(run_dir))) in shown.replace("\n", "") and "CANCELLED" in shown
    result = dtvg("run", "resume", run_dir.name, "--runs-dir", runs_dir)  # resumable, as a killed run
    assert result.returncode == 0, result.stderr
    subprocess.run(["scancel", slurm.read_job(run_dir)["job_id"]], check=True)
    wait_for("the resumed job to leave the queue", lambda: settled(run_dir))
    result = dtvg(
        "runs", "rm", run_dir.name, "--runs-dir", runs_dir
    )  # and its jobs' files under _slurm go too
    assert result.returncode == 0, result.stderr
    assert list_run_dirs(runs_dir) == [] and list((runs_dir / "_slurm").iterdir()) == []


@on_cluster
def test_a_run_never_sees_or_signals_a_job_that_reuses_its_id(runs_dir, data_dir) -> None:
    restart_cluster()  # ids from 1: the old run's job id comes again below
    old = submit_stage1(runs_dir, data_dir, 2)
    old_job = slurm.read_job(old)["job_id"]
    assert wait_for("the old run to complete", lambda: settled(old)).status == "completed"
    restart_cluster()  # a fresh controller hands out the same ids again
    new = submit_stage1(runs_dir, data_dir, 2, "--slurm-option", "begin=now+1hour")  # held in the queue
    new_job = slurm.read_job(new)["job_id"]
    try:
        assert new_job == old_job
        wait_for("the new job to wait", lambda: summarize(new).slurm_state == "queued (BeginTime)", 30)
        summary = summarize(old)
        assert (summary.status, summary.slurm_state) == ("completed", None)
        docs = {
            d["run_id"]: d for d in json.loads(dtvg("runs", "list", "--json", "--runs-dir", runs_dir).stdout)
        }
        assert (docs[old.name]["status"], docs[old.name]["slurm_state"]) == ("completed", None)
        assert docs[new.name]["status"] == "pending"
        for kill in ([], ["--kill"]):
            result = dtvg("runs", "stop", old.name, *kill, "--runs-dir", runs_dir)
            assert result.returncode == 2 and "is not running (completed)" in result.stderr, result.stderr
        assert slurm.squeue([new_job])[new_job].state == "PENDING"  # the new run's job untouched
        assert summarize(new).slurm_state == "queued (BeginTime)"
    finally:
        subprocess.run(["scancel", new_job], check=False)


@on_cluster
def test_a_pipeline_sbatch_refuses_leaves_nothing_behind(runs_dir, data_dir, tmp_path) -> None:
    study = tmp_path / "refused.toml"
    study.write_text(
        f'model = "tiny-llama"\nprompt_length = 4\ndevice = "cpu"\ndata_dir = "{data_dir}"\n'
        'sources = ["mnli"]\ntargets = ["rte"]\nmethods = ["dtvg"]\n[slurm]\npartition = "nosuch"\n'
    )
    result = dtvg("run", "pipeline", study, "--executor", "slurm", "--runs-dir", runs_dir)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: sbatch refused the job") and len(result.stderr.splitlines()) == 1
    assert sorted(runs_dir.iterdir()) == []  # no run folder, no study record, no submitit folder


@on_cluster
def test_stopping_a_study_on_slurm_cancels_its_queued_runs_and_the_rest_of_its_pipeline(
    runs_dir, data_dir, tmp_path
) -> None:
    from dtvg_engine.studies import studyprocess

    path = tmp_path / "stopme.toml"
    path.write_text(
        f'model = "tiny-llama"\nprompt_length = 4\ndevice = "cpu"\ndata_dir = "{data_dir}"\n'
        'sources = ["mnli"]\ntargets = ["rte"]\nmethods = ["dtvg"]\n'
        '[slurm]\ntime = "10"\noptions = { begin = "now+1hour" }\n'  # held in the queue
    )
    result = dtvg("run", "pipeline", path, "--executor", "slurm", "--runs-dir", runs_dir)
    assert result.returncode == 0, result.stderr
    jobs = [slurm.job_id_of(d) for d in list_run_dirs(runs_dir)]
    (rest,) = [
        line.split("Slurm job ")[1].split(",")[0] for line in result.stdout.splitlines() if "rest" in line
    ]
    try:
        assert len(jobs) == 2 and set(slurm.squeue([*jobs, rest])) == {*jobs, rest}
        assert job_names([*jobs, rest]) == {"dtvg-stopme-stage1", "dtvg-pipeline-stopme"}  # says whose
        assert studyprocess.pipeline_running(runs_dir, "stopme") == f"Slurm job {rest}"  # no process: its job
        assert studyprocess.stop_study(studyprocess.load_study(path)[0], runs_dir) == (True, 2)
        wait_for("every job of the study to leave the queue", lambda: slurm.squeue([*jobs, rest]) == {}, 30)
        assert studyprocess.pipeline_running(runs_dir, "stopme") is None
        assert len(list_run_dirs(runs_dir)) == 2  # stage 2 was never submitted
    finally:
        subprocess.run(["scancel", *jobs, rest], check=False)


def trained_in_start(run_dir: Path, start: int) -> bool:
    """Whether the run's worker has started `start` times and made a training step since the last."""
    events = [e for e in read_events(run_dir / EVENTS) if isinstance(e, RunStarted | Step)]
    return sum(isinstance(e, RunStarted) for e in events) == start and isinstance(events[-1], Step)


@on_cluster
def test_a_run_that_keeps_reaching_its_time_limit_ends_failed_and_resumes_with_more_time(
    runs_dir, data_dir
) -> None:
    run_dir = submit_stage1(runs_dir, data_dir, 400)
    job_id = slurm.read_job(run_dir)["job_id"]
    for start in range(1, slurm.MAX_TIME_LIMITS + 2):
        wait_for(
            f"start {start} of the job to train", lambda n=start: trained_in_start(run_dir, n), every=0.2
        )
        # Slurm's warning; with a 10-minute limit any warning counts as the time limit (submitit's rule)
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    summary = wait_for("the run to end", lambda: settled(run_dir))
    assert summary.status == "failed" and summary.step < 400
    assert f"reached its time limit (10) {slurm.MAX_TIME_LIMITS + 1} times" in summary.error
    assert f"dtvg run resume {run_dir.name} --slurm-time 20" in summary.error
    result = dtvg("run", "resume", run_dir.name, "--slurm-time", "20", "--runs-dir", runs_dir)
    assert result.returncode == 0, result.stderr
    record = slurm.read_job(run_dir)
    try:
        assert record["resources"]["time"] == "20" and record["previous_jobs"] == [job_id]
        state = wait_for(
            "the resumed job", lambda: slurm.squeue([record["job_id"]]).get(record["job_id"]), 30
        )
        assert state.submitted_from(record["folder"])
    finally:
        subprocess.run(["scancel", record["job_id"]], check=False)


@on_cluster
def test_a_job_requeued_from_outside_goes_on_without_a_false_error(runs_dir, data_dir) -> None:
    run_dir = submit_stage1(runs_dir, data_dir, STEPS)
    job_id = slurm.read_job(run_dir)["job_id"]
    wait_for("the first step", lambda: summarize(run_dir).step >= 1, every=0.1)
    subprocess.run(["scontrol", "requeue", job_id], check=True)  # SIGTERM, then back in the queue
    seen = set()

    def done() -> RunSummary | None:
        seen.add(summarize(run_dir).status)
        return settled(run_dir)

    summary = wait_for("the requeued job to complete the run", done, every=0.3)
    assert summary.status == "completed" and "stopped" not in seen
    events = lifecycle(run_dir)
    assert [e.job_id for e in events if isinstance(e, RunStarted)] == [job_id, job_id]
    assert [e.status for e in events if isinstance(e, RunFinished)] == ["completed"]
    assert not [e for e in events if isinstance(e, Log) and e.level == "error"]


@on_cluster
def test_a_pipeline_whose_runs_fail_names_them_and_fails_its_last_job(runs_dir, data_dir, tmp_path) -> None:
    study = tmp_path / "failing.toml"
    study.write_text(
        f'model = "tiny-llama"\nprompt_length = 4\ndevice = "cuda"\ndata_dir = "{data_dir}"\n'  # no GPU here
        'sources = ["mnli"]\ntargets = ["rte"]\nmethods = ["dtvg"]\njobs = 2\n[slurm]\ntime = "10"\n'
    )
    result = dtvg("run", "pipeline", study, "--executor", "slurm", "--runs-dir", runs_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    stage1 = list_run_dirs(runs_dir)
    md, _ = results_paths(runs_dir, "failing")
    wait_for("the last pipeline job to write the results", md.is_file, timeout=300)
    record = json.loads((runs_dir / "_pipelines" / "failing.slurm.json").read_text())
    log = slurm.log_path(record)

    def said() -> str | None:
        text = log.read_text() if log.is_file() else ""
        return text if "did not complete" in text else None

    text = wait_for("the last job to name the runs that did not complete", said, timeout=60)
    assert all(f"{d.name} (failed)" in text for d in stage1), text
