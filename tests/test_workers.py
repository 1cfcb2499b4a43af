"""`--jobs N|auto` (issue 13): workers at once, each pinned to its share of the cores or to one GPU, so
that jobs x threads never exceeds the cores. Before, every worker's torch took a thread per core."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dtvg_engine.config import parse_jobs
from dtvg_engine.errors import UserError
from dtvg_engine.runs import workers
from dtvg_engine.runs.runfolder import list_run_dirs
from dtvg_engine.studies.studyfile import load_experiment


@pytest.fixture
def eight_cores(monkeypatch):
    """A machine of 8 cores and plenty of memory, without GPUs."""
    monkeypatch.setattr(workers, "cpu_cores", lambda: 8)
    monkeypatch.setattr(workers, "available_memory", lambda: 64 << 30)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def threads(slots: list[dict[str, str]]) -> list[int]:
    return [int(slot["OMP_NUM_THREADS"]) for slot in slots]


@pytest.mark.parametrize(
    ("jobs", "runs", "expected"),
    [("auto", 3, [2, 2, 2]), ("auto", 20, [1] * 8), ("auto", 1, [8]), (2, 5, [4, 4]), (16, 20, [1] * 16)],
)
def test_each_slot_gets_its_share_of_the_cores(eight_cores, jobs, runs, expected):
    slots = workers.slot_environments(jobs, ["auto"] * runs)
    assert threads(slots) == expected
    for slot in slots:
        assert slot["MKL_NUM_THREADS"] == slot["OMP_NUM_THREADS"] and "CUDA_VISIBLE_DEVICES" not in slot


def test_auto_takes_no_more_workers_than_memory_holds(eight_cores, monkeypatch):
    monkeypatch.setattr(workers, "available_memory", lambda: 3 * workers.WORKER_MEMORY)
    assert threads(workers.slot_environments("auto", ["cpu"] * 10)) == [2, 2, 2]


def test_one_worker_per_gpu(eight_cores, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,3")
    slots = workers.slot_environments("auto", ["auto"] * 5)
    assert [slot["CUDA_VISIBLE_DEVICES"] for slot in slots] == ["0", "3"]
    assert threads(slots) == [4, 4]
    cpu_only = workers.slot_environments("auto", ["cpu"] * 5)  # runs told to use the CPU ignore the GPUs
    assert threads(cpu_only) == [1] * 5 and all("CUDA_VISIBLE_DEVICES" not in s for s in cpu_only)


@pytest.mark.parametrize(("value", "parsed"), [("auto", "auto"), ("3", 3), (2, 2)])
def test_jobs_values(value, parsed):
    assert parse_jobs("--jobs", value) == parsed


@pytest.mark.parametrize("value", ["0", "many", -1, 1.5, True])
def test_bad_jobs_values_are_refused(value):
    with pytest.raises(UserError, match="--jobs must be a positive integer or auto"):
        parse_jobs("--jobs", value)


def test_a_study_takes_jobs_auto_by_default_and_refuses_a_bad_value(tmp_path: Path):
    study = 'model = "tiny-llama"\nsources = ["sst2"]\ntargets = ["rte"]\nmethods = ["pt"]\n'
    path = tmp_path / "s.toml"
    path.write_text(study)
    assert load_experiment(path).jobs == "auto"
    path.write_text(study + 'jobs = "lots"\n')
    with pytest.raises(UserError, match=r"s.toml: jobs must be a positive integer or auto \(got 'lots'\)"):
        load_experiment(path)


def test_jobs_auto_runs_workers_side_by_side_on_their_share_of_the_cores(runs_dir, data_dir):
    """Real workers: each logs the torch threads it got; together they never exceed the cores."""
    args = ["run", "stage1", "rte", "mrpc", "--model", "tiny-llama", "--prompt-length", "4", "--k-shot", "16"]
    args += ["--max-eval", "16", "--steps", "2", "--eval-every", "2", "--device", "cpu", "--jobs", "auto"]
    args += ["--runs-dir", str(runs_dir), "--data-dir", str(data_dir)]
    done = subprocess.run([sys.executable, "-m", "dtvg_engine.cli", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    at_once = workers.parallel_runs("auto", 2)
    assert f"{at_once} worker(s) at once" in done.stderr
    for run_dir in list_run_dirs(runs_dir):
        events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
        (line,) = [e["message"] for e in events if e["type"] == "log" and "torch threads" in e["message"]]
        assert line.endswith(f", {max(1, workers.cpu_cores() // at_once)} torch threads"), line
