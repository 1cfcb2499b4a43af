"""Run folders: ids, creation, lookup, annotations and the summary derived from events."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from cli_helpers import assert_bad_input, dtvg
from live_worker import owning, stand_in_worker

from dtvg_engine.errors import UserError
from dtvg_engine.runs import atomic, runactions, runfolder, runmeta, runowner, runstatus
from dtvg_engine.runs.events import Eval, Event, EventWriter, RunFinished, RunStarted, Step
from dtvg_tui.runindex import RunIndex

CONFIG = {"stage": "stage1", "method": "pt", "task": "rte", "model": "tiny-llama", "steps": 50}


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def emit(run_dir: Path, event: Event) -> Event:
    with EventWriter(run_dir / runfolder.EVENTS) as writer:
        return writer.emit(event)


def started(run_dir: Path, pid: int | None = None) -> Event:
    pid = os.getpid() if pid is None else pid
    return emit(
        run_dir, RunStarted(run_id=run_dir.name, stage="stage1", method="pt", task="rte", pid=pid, config={})
    )


def test_new_run_id_is_timestamped_and_filesystem_safe():
    now = datetime(2025, 3, 4, 5, 6, 7)
    run_id = runfolder.new_run_id("stage2", "RTE / from MNLI+QNLI!", now)
    assert run_id == "20250304-050607-stage2-rte-from-mnli-qnli"
    assert runfolder.new_run_id("stage1", "cola_v1.2", now) == "20250304-050607-stage1-cola_v1.2"


def test_default_runs_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("DTVG_RUNS_DIR", raising=False)
    assert runfolder.default_runs_dir() == Path("runs")
    monkeypatch.setenv("DTVG_RUNS_DIR", str(tmp_path))
    assert runfolder.default_runs_dir() == tmp_path


def test_create_run_writes_config_with_id_and_never_reuses_a_folder(runs_dir):
    config = dict(CONFIG)
    first = runfolder.create_run(runs_dir, "stage1", "RTE", config)
    second = runfolder.create_run(runs_dir, "stage1", "RTE", config)
    third = runfolder.create_run(runs_dir, "stage1", "RTE", config)
    assert runfolder.read_config(first) == {"run_id": first.name, **CONFIG}
    assert runfolder.read_config(second)["run_id"] == second.name
    assert len({first, second, third}) == 3
    if first.name[:15] == third.name[:15]:  # created within the same second
        assert second.name == first.name + "-2" and third.name == first.name + "-3"
    assert config == CONFIG
    assert sorted(p.name for p in runs_dir.iterdir()) == sorted([first.name, second.name, third.name])


def test_write_json_atomic_replaces_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "x.json"
    atomic.write_json_atomic(path, {"a": 1})
    atomic.write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_read_config_of_a_non_run_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="config.json"):
        runfolder.read_config(tmp_path)


def test_list_run_dirs_skips_inits_hidden_and_non_runs(runs_dir):
    b = runfolder.create_run(runs_dir, "stage1", "b", CONFIG)
    for name in ("_inits", ".tmp", "not-a-run"):
        (runs_dir / name).mkdir()
    (runs_dir / "_inits" / runfolder.CONFIG).write_text("{}")
    (runs_dir / "history.json").write_text("{}")
    a = runs_dir / "00000000-000000-stage1-a"
    a.mkdir()
    atomic.write_json_atomic(a / runfolder.CONFIG, CONFIG)
    assert runfolder.list_run_dirs(runs_dir) == [a, b]
    assert runfolder.list_run_dirs(runs_dir / "missing") == []


def test_find_run_by_id_suffix_or_path(runs_dir):
    rte = runs_dir / "20250101-000000-stage1-rte"
    rte2 = runs_dir / "20250101-000001-stage2-rte"
    cola = runs_dir / "20250101-000002-stage1-cola"
    for run in (rte, rte2, cola):
        run.mkdir()
        atomic.write_json_atomic(run / runfolder.CONFIG, CONFIG)
    assert runfolder.find_run(runs_dir, rte.name) == rte
    assert runfolder.find_run(runs_dir, "cola") == cola
    assert runfolder.find_run(runs_dir, "stage2") == rte2
    assert runfolder.find_run(runs_dir, str(cola)) == cola
    with pytest.raises(UserError, match=r"'rte' matches 2 runs: .*give more of the id"):
        runfolder.find_run(runs_dir, "rte")
    with pytest.raises(UserError, match=r"no run matching 'xyz' in .*dtvg runs list"):
        runfolder.find_run(runs_dir, "xyz")


def test_pid_alive_sees_live_dead_and_zombie_processes():
    assert runowner.pid_alive(os.getpid())
    assert not runowner.pid_alive(dead_pid())
    assert not runowner.pid_alive(None) and not runowner.pid_alive(0) and not runowner.pid_alive(-1)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while runowner.pid_alive(zombie.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    if Path("/proc").is_dir():
        assert not runowner.pid_alive(zombie.pid)  # exited, not reaped yet
    zombie.wait()


def test_meta_round_trip_and_defaults(runs_dir):
    run = runfolder.create_run(runs_dir, "stage1", "rte", CONFIG)
    assert runmeta.read_meta(run) == {"tags": [], "note": ""}
    assert runmeta.update_meta(run, tags=["best", "paper", "best"]) == {"tags": ["best", "paper"], "note": ""}
    runmeta.update_meta(run, note="lr 0.3")
    assert runmeta.read_meta(run) == {"tags": ["best", "paper"], "note": "lr 0.3"}
    (run / runfolder.META).write_text("{broken")
    assert runmeta.read_meta(run) == {"tags": [], "note": ""}


def test_tail_log_returns_last_lines(runs_dir):
    run = runfolder.create_run(runs_dir, "stage1", "rte", CONFIG)
    assert runfolder.tail_log(run) == []
    (run / runfolder.LOG).write_text("".join(f"line {i}\n" for i in range(100)) + "Traceback: boom")
    assert runfolder.tail_log(run, lines=3) == ["line 98", "line 99", "Traceback: boom"]


def test_summary_of_a_completed_run(runs_dir):
    run = runfolder.create_run(runs_dir, "stage1", "rte", {**CONFIG, "primary_metric": "accuracy"})
    runmeta.update_meta(run, tags=["x"], note="hello")
    start = started(run)
    emit(run, Step(step=10, loss=1.0, lr={"prompt": 0.3}, samples_per_s=5.0))
    emit(run, Eval(step=10, split="validation", metrics={"accuracy": 0.6}, primary=0.6, best=True))
    emit(run, Step(step=20, loss=0.8, lr={"prompt": 0.3}, samples_per_s=5.0))
    emit(run, Eval(step=20, split="validation", metrics={"accuracy": 0.5}, primary=0.5, best=False))
    finish = emit(run, RunFinished(status="completed", summary={}, error=None))
    with open(run / runfolder.EVENTS, "a") as f:
        f.write('{"v": 1, "type": "step", "ste')  # torn last line

    summary = runstatus.summarize(run)
    assert summary.to_dict() == {
        "run_id": run.name, "stage": "stage1", "method": "pt", "task": "rte", "model": "tiny-llama",
        "status": "completed", "best_metric": 0.6, "metric_name": "accuracy", "step": 20, "total_steps": 50,
        "started": start.time, "ended": finish.time, "duration": finish.time - start.time,
        "pid": os.getpid(), "error": None, "tags": ["x"], "note": "hello", "run_dir": str(run),
        "executor": "local", "job_id": None, "host": None, "slurm_state": None,
    }  # fmt: skip


def test_summary_of_a_stage2_run_names_its_target(runs_dir):
    config = {"stage": "stage2", "method": "dtvg", "target": "rte", "model": "m", "steps": 5}
    summary = runstatus.summarize(runfolder.create_run(runs_dir, "stage2", "rte", config))
    assert (summary.stage, summary.method, summary.task) == ("stage2", "dtvg", "rte")
    assert summary.status == "pending"
    assert summary.best_metric is None and summary.started is None and summary.duration is None


def test_status_of_failed_run_carries_its_error(runs_dir):
    run = runfolder.create_run(runs_dir, "stage1", "rte", CONFIG)
    started(run)
    emit(run, RunFinished(status="failed", summary={}, error="CUDA out of memory"))
    summary = runstatus.summarize(run)
    assert (summary.status, summary.error) == ("failed", "CUDA out of memory")


def test_status_running_while_a_worker_owns_the_run_then_killed(runs_dir):
    run = runfolder.create_run(runs_dir, "stage1", "rte", CONFIG)
    with owning(run):
        started(run)
        assert runstatus.summarize(run).status == "running"
    assert runstatus.summarize(run).status == "killed"  # this process lives on, but no longer owns the run
    killed = runfolder.create_run(runs_dir, "stage1", "rte", CONFIG)
    started(killed, pid=dead_pid())
    summary = runstatus.summarize(killed)
    assert (summary.status, summary.ended) == ("killed", None)
    assert "ended before it finished; no exit status was recorded" in summary.error  # nothing waited


def test_a_recycled_pid_does_not_make_a_run_running(runs_dir):
    """The worker died and its pid now names another, unrelated, live process."""
    run = runfolder.create_run(runs_dir, "stage1", "rte", CONFIG)
    other = subprocess.Popen(["sleep", "30"])
    try:
        started(run, pid=other.pid)
        (run / runfolder.PIDFILE).write_text(f"{other.pid}\n")
        assert runstatus.summarize(run).status == "killed"
        assert runactions.action_refusal(run, "resume") is None
        assert runactions.action_refusal(run, "stop") == f"run {run.name} is not running (killed)"
    finally:
        other.kill()
        other.wait()


def test_a_stopped_worker_shows_suspended_and_stop_continues_it(runs_dir):
    run = runfolder.create_run(runs_dir, "stage1", "rte", CONFIG)
    with stand_in_worker(run) as worker:
        started(run, pid=worker.pid)
        assert runstatus.summarize(run).status == "running"
        os.kill(worker.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while not runowner.pid_suspended(worker.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        summary = runstatus.summarize(run)
        assert (summary.status, summary.pid) == ("suspended", worker.pid)
        (listed,) = json.loads(dtvg("runs", "list", "--json", "--runs-dir", runs_dir).stdout)
        assert listed["status"] == "suspended"  # the CLI's listing
        (indexed,), _ = RunIndex(runs_dir).scan()
        assert indexed.status == "suspended"  # the dashboard's
        refused = assert_bad_input(dtvg("run", "resume", run.name, "--runs-dir", runs_dir))
        assert f"run {run.name} is suspended (worker pid {worker.pid}); stop it first" in refused
        stopped = dtvg("runs", "stop", run.name, "--runs-dir", runs_dir)  # SIGTERM, then SIGCONT
        assert stopped.returncode == 0, stopped.stderr
        assert worker.wait(timeout=10) == -signal.SIGTERM
    assert runstatus.summarize(run).status == "killed"  # the stand-in wrote no run_finished


def test_status_before_the_first_event_follows_the_worker_lock(runs_dir):
    run = runfolder.create_run(runs_dir, "stage1", "rte", CONFIG)
    assert runstatus.summarize(run).status == "pending"  # nothing launched yet, or a foreground run starting
    with stand_in_worker(run) as worker:
        (run / runfolder.PIDFILE).write_text(f"{worker.pid}\n")
        assert runstatus.summarize(run).status == "pending"
        assert runstatus.summarize(run).pid == worker.pid
    assert runstatus.summarize(run).status == "killed"
    (run / runfolder.PIDFILE).write_text(f"{os.getpid()}\n")  # alive, but not the run's worker
    assert runstatus.summarize(run).status == "killed"


def test_resumed_run_counts_every_segment(runs_dir):
    run = runfolder.create_run(runs_dir, "stage1", "rte", CONFIG)
    first = started(run)
    emit(run, RunFinished(status="stopped", summary={}, error=None))
    with stand_in_worker(run) as worker:  # relaunched; the new worker is still loading
        (run / runfolder.PIDFILE).write_text(f"{worker.pid}\n")
        os.utime(run / runfolder.PIDFILE, (time.time() + 1, time.time() + 1))
        relaunched = runstatus.summarize(run)
        assert (relaunched.status, relaunched.ended, relaunched.pid) == ("pending", None, worker.pid)
        second = started(run, pid=worker.pid)
        assert runstatus.summarize(run).status == "running"
    end = emit(run, RunFinished(status="completed", summary={}, error=None))
    summary = runstatus.summarize(run)
    assert (summary.status, summary.started, summary.ended) == ("completed", first.time, end.time)
    events = [json.loads(line) for line in (run / runfolder.EVENTS).read_text().splitlines()]
    expected = (events[1]["time"] - first.time) + (end.time - second.time)
    assert summary.duration == pytest.approx(expected)


def test_a_finished_run_whose_relaunch_died_keeps_its_status(runs_dir):
    run = runfolder.create_run(runs_dir, "stage1", "rte", CONFIG)
    started(run)
    emit(run, RunFinished(status="completed", summary={}, error=None))
    (run / runfolder.PIDFILE).write_text(f"{dead_pid()}\n")
    os.utime(run / runfolder.PIDFILE, (time.time() + 1, time.time() + 1))
    assert runstatus.summarize(run).status == "completed"
