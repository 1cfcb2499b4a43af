"""Launching, stopping and killing real worker subprocesses (a small stand-in for the real worker)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from dtvg_engine.runs import launcher, runfolder, runowner, runstatus

REPO = Path(__file__).resolve().parents[1]
CONFIG = {"stage": "stage1", "method": "pt", "task": "rte", "model": "tiny-llama", "steps": 10}

STAND_IN = """
import os, signal, subprocess, sys, time
sys.path.insert(0, sys.argv[2])
from dtvg_engine.runs.events import EventWriter, RunFinished, RunStarted

events = EventWriter(os.path.join(sys.argv[1], "events.jsonl"))

def stop(signum, frame):
    events.emit(RunFinished(status="stopped", summary={}, error=None))
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
events.emit(RunStarted(run_id=os.path.basename(sys.argv[1]), stage="stage1", method="pt", task="rte",
            pid=os.getpid(), config={}))
child = subprocess.Popen(["sleep", "60"])
print("child", child.pid, flush=True)
time.sleep(60)
"""
"""A worker that starts, spawns a child, then waits; on SIGTERM it finishes "stopped" like the real one."""


@pytest.fixture
def launched():
    """Pids launched by a test; whatever is left of their groups is killed afterwards."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        launcher.wait_for_exit(pid, 5)


def launch(run_dir: Path, launched: list[int], command: list[str] | None = None) -> int:
    command = command or [sys.executable, "-c", STAND_IN, str(run_dir), str(REPO)]
    pid = launcher.launch_worker(run_dir, command)
    launched.append(pid)
    return pid


def wait_until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_launch_returns_at_once_and_records_the_pid(runs_dir, launched):
    run = runfolder.create_run(runs_dir, "stage1", "rte", CONFIG)
    begin = time.monotonic()
    pid = launch(run, launched, [sys.executable, "-c", "import time; time.sleep(60)"])
    assert time.monotonic() - begin < 10  # did not wait for the 60 s worker (loose for a loaded machine)
    assert runowner.read_pid(run) == pid
    assert runowner.pid_alive(pid)
    assert os.getpgid(pid) == pid  # its own session and group
    summary = runstatus.summarize(run)
    assert (summary.status, summary.pid) == ("pending", pid)
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []


def test_stop_before_the_first_event_leaves_a_killed_run(runs_dir, launched):
    run = runfolder.create_run(runs_dir, "stage1", "rte", CONFIG)
    pid = launch(run, launched, [sys.executable, "-c", "import time; time.sleep(60)"])
    assert launcher.stop_run(run)
    assert launcher.wait_for_exit(pid, 10)
    assert runstatus.summarize(run).status == "killed"
    assert not launcher.stop_run(run)


def test_stop_is_graceful(runs_dir, launched):
    run = runfolder.create_run(runs_dir, "stage1", "rte", CONFIG)
    pid = launch(run, launched)
    wait_until(lambda: runstatus.summarize(run).status == "running")
    assert runstatus.summarize(run).pid == pid
    assert launcher.stop_run(run)
    assert launcher.wait_for_exit(pid, 10)
    assert runstatus.summarize(run).status == "stopped"
    assert not launcher.stop_run(run) and not launcher.kill_run(run)


def test_kill_takes_the_worker_and_its_children(runs_dir, launched):
    run = runfolder.create_run(runs_dir, "stage1", "rte", CONFIG)
    pid = launch(run, launched)
    wait_until(lambda: any(line.startswith("child ") for line in runfolder.tail_log(run)))
    child = int(next(line for line in runfolder.tail_log(run) if line.startswith("child ")).split()[1])
    assert runstatus.summarize(run).status == "running" and runowner.pid_alive(child)
    assert launcher.kill_run(run)
    assert launcher.wait_for_exit(pid, 10)
    assert launcher.wait_for_exit(child, 10)
    assert runstatus.summarize(run).status == "killed"
    assert not launcher.kill_run(run)


def test_a_run_without_a_live_worker_is_left_alone(runs_dir):
    run = runfolder.create_run(runs_dir, "stage1", "rte", CONFIG)
    assert not launcher.stop_run(run) and not launcher.kill_run(run)


def test_default_command_is_the_worker_module(runs_dir, monkeypatch):
    seen = {}

    class FakePopen:
        pid = 4242

        def __init__(self, command, **kwargs):
            seen.update(command=command, **kwargs)

    monkeypatch.setattr(launcher.subprocess, "Popen", FakePopen)
    monkeypatch.setattr(launcher, "_children", [])
    run = runfolder.create_run(runs_dir, "stage1", "rte", CONFIG)
    assert launcher.launch_worker(run) == 4242
    assert seen["command"] == [sys.executable, "-m", "dtvg_engine.worker", str(run)]
    assert seen["start_new_session"] and seen["stdin"] == launcher.subprocess.DEVNULL
    assert (run / runfolder.LOG).exists() and runowner.read_pid(run) == 4242


def test_wait_for_exit_times_out_on_a_live_process():
    begin = time.monotonic()
    assert not launcher.wait_for_exit(os.getpid(), 0.1)
    assert time.monotonic() - begin < 5  # gave up near its 0.1 s timeout (loose for a loaded machine)
