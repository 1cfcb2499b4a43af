"""The `dtvg` command line: bad input is exit code 2 and one line, listings are JSON.

The commands: docs/architecture.md, 'Commands'.

Every bad-input case must leave the runs directory without a run folder: input is checked before a
run is created, so nothing half-made shows up in `dtvg runs list` or the dashboard.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_bad_input
from safetensors.numpy import save_file
from tinydb import TinyDB

from dtvg_engine.config import stage1_config
from dtvg_engine.runs.events import EventWriter, RunFinished, RunStarted
from dtvg_engine.runs.runfolder import create_run

_VENV_DTVG = Path(sys.executable).with_name("dtvg")
DTVG = str(_VENV_DTVG) if _VENV_DTVG.exists() else "dtvg"

TINY = ["--model", "tiny-llama", "--prompt-length", "4", "--k-shot", "16", "--max-eval", "16"]
TINY += ["--steps", "2", "--eval-every", "1", "--device", "cpu"]


def dtvg(*args: object, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DTVG, *map(str, args)], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def run_folders(runs_dir: Path) -> list[str]:
    return sorted(p.name for p in runs_dir.iterdir() if p.is_dir())


def corrupt_copy(data_dir: Path, target: Path) -> Path:
    """A copy of rte under `target` whose train.jsonl line 3 is broken JSON."""
    shutil.copytree(data_dir / "rte", target / "rte")
    train = target / "rte" / "train.jsonl"
    lines = train.read_text().splitlines(keepends=True)
    lines[2] = '{"sentence1": "cut off in the middle, "label": \n'
    train.write_text("".join(lines))
    return target


BAD_STAGE1 = {
    "unknown task": (["nosuchtask"], "unknown task 'nosuchtask'"),
    "missing data dir": (["rte", "--data-dir", "{tmp}/no-such-data"], "{tmp}/no-such-data"),
    "malformed data file": (["rte", "--data-dir", "{tmp}/bad"], "{tmp}/bad/rte/train.jsonl: line 3 "),
    "evaluation-only task": (["boolq"], "boolq"),
    "prompt length 0": (["rte", "--prompt-length", "0"], "--prompt-length"),
    "zero steps": (["rte", "--steps", "0"], "--steps"),
    "unknown model": (["rte", "--model", "nosuchmodel"], "unknown model 'nosuchmodel'"),
    "k-shot above the train size": (["rte", "--k-shot", "100000"], "k_shot"),
    "zero jobs": (["rte", "--jobs", "0"], "--jobs"),
    "unknown device": (["rte", "--device", "gpu"], "gpu"),
    "lr nan": (["rte", "--lr", "nan"], "--lr must be a finite number above 0 (got nan)"),
    "lr inf": (["rte", "--lr", "inf"], "--lr must be a finite number above 0 (got inf)"),
    "huge prompt length": (
        ["rte", "--prompt-length", "100000"],
        "--prompt-length must be an integer from 1 to",
    ),
    "empty train file": (["rte", "--data-dir", "{tmp}/empty"], "{tmp}/empty/rte/train.jsonl has no rows"),
    "init prompt of the wrong shape": (
        ["rte", "--init-prompt", "{tmp}/wrong-shape.safetensors"],
        "holds a prompt of shape [5, 64], but init tiny-llama-r4-s0 has 4 tokens",
    ),
}
"""case: (arguments after `dtvg run stage1`, text the error line must hold); {tmp} is the case's folder."""


def bad_files(data_dir: Path, tmp: Path) -> None:
    """The broken inputs the cases name: a malformed and an empty rte train file, and a prompt file of
    init tiny-llama-r4-s0 (4 tokens) whose tensor has 5 rows."""
    corrupt_copy(data_dir, tmp / "bad")
    shutil.copytree(data_dir / "rte", tmp / "empty" / "rte")
    (tmp / "empty" / "rte" / "train.jsonl").write_text("\n")
    wrong = np.zeros((5, 64), dtype=np.float32)
    save_file({"prompt": wrong}, tmp / "wrong-shape.safetensors", metadata={"init_id": "tiny-llama-r4-s0"})


@pytest.fixture(scope="module")
def bad_stage1(tmp_path_factory, data_dir) -> dict[str, tuple[Path, Path, subprocess.CompletedProcess[str]]]:
    """Every bad-input case run at once (each starts a Python with torch: in parallel they take seconds).

    Each case gets its own runs directory; returns case -> (case folder, runs dir, result).
    """
    started = {}
    for case, (args, _) in BAD_STAGE1.items():
        tmp = tmp_path_factory.mktemp("bad-input")
        runs_dir = tmp / "runs"
        runs_dir.mkdir()
        bad_files(data_dir, tmp)
        # The case's own options come last, so they override the defaults before them.
        command = [DTVG, "run", "stage1", *TINY, "--runs-dir", str(runs_dir), "--data-dir", str(data_dir)]
        command += [arg.replace("{tmp}", str(tmp)) for arg in args]
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
        )
        started[case] = (tmp, runs_dir, process)
    results = {}
    for case, (tmp, runs_dir, process) in started.items():
        stdout, stderr = process.communicate(timeout=300)
        results[case] = (
            tmp,
            runs_dir,
            subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr),
        )
    return results


@pytest.mark.parametrize("case", list(BAD_STAGE1))
def test_bad_stage1_input_is_exit_2_one_line_and_no_run(case, bad_stage1):
    tmp, runs_dir, result = bad_stage1[case]
    line = assert_bad_input(result)
    assert BAD_STAGE1[case][1].replace("{tmp}", str(tmp)) in line
    assert run_folders(runs_dir) == []


def test_unknown_run_is_exit_2(runs_dir):
    for command in (["runs", "show"], ["runs", "stop"], ["runs", "rm"], ["run", "resume"], ["tpv", "show"]):
        line = assert_bad_input(dtvg(*command, "nosuchrun", "--runs-dir", runs_dir))
        assert "nosuchrun" in line
    assert run_folders(runs_dir) == []


@pytest.fixture
def pending_run(runs_dir, data_dir) -> Path:
    """A created run folder whose worker never started (no events, no TPV)."""
    config = stage1_config("rte", model="tiny-llama", prompt_length=4, data_dir=str(data_dir))
    return create_run(runs_dir, "stage1", "rte", config)


def test_tpv_show_on_a_run_without_tpv(runs_dir, pending_run):
    line = assert_bad_input(dtvg("tpv", "show", pending_run.name, "--runs-dir", runs_dir))
    assert pending_run.name in line and "tpv.safetensors" in line


def test_stop_and_resume_refuse_runs_in_the_wrong_state(runs_dir, pending_run):
    line = assert_bad_input(dtvg("runs", "stop", pending_run.name, "--runs-dir", runs_dir))
    assert "not running" in line
    with EventWriter(pending_run / "events.jsonl") as events:  # now it has completed
        events.emit(
            RunStarted(run_id=pending_run.name, stage="stage1", method="pt", task="rte", pid=1, config={})
        )
        events.emit(RunFinished(status="completed", summary={}, error=None))
    line = assert_bad_input(dtvg("run", "resume", pending_run.name, "--runs-dir", runs_dir))
    assert "completed" in line  # a queued run resumes (tests/test_shared_runs.py), a completed one not


def test_runs_list_json_on_an_empty_runs_dir(runs_dir):
    result = dtvg("runs", "list", "--json", "--runs-dir", runs_dir)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_runs_table_is_drawn_as_rich_draws_it(capsys):
    """`runs list` draws its table line by line (rich's Table took seconds for 5,000 runs, issue 24); what
    it prints is what rich's Table prints for the same values, wide characters and empty cells included."""
    from rich.console import Console
    from rich.table import Table

    from dtvg_engine.cli import runs

    docs = [
        {"run_id": "20250101-000000-stage1-rte", "stage": "stage1", "method": "pt", "task": "rte",
         "model": "tiny-llama", "status": "completed", "executor": "local", "best_metric": 0.71234,
         "step": 30, "total_steps": 30, "tags": ["実験", "b"]},
        {"run_id": "r2", "stage": "stage2", "method": "dtvg", "task": "sst2", "model": "m",
         "status": "killed", "executor": "slurm", "job_id": "42", "best_metric": None, "step": 0,
         "total_steps": None, "tags": []},
    ]  # fmt: skip
    runs.show_table(docs)
    printed = capsys.readouterr().out
    table = Table()
    for key in runs.COLUMNS:
        table.add_column(key, no_wrap=True)
    for doc in docs:
        table.add_row(*(runs._cell(doc, key) for key in runs.COLUMNS))
    console = Console(width=300, file=io.StringIO(), color_system=None)
    console.print(table, crop=False)
    expected = "\n".join(line.rstrip() for line in console.file.getvalue().splitlines())
    assert "\n".join(line.rstrip() for line in printed.splitlines()) == expected
    assert "0.7123" in printed and "slurm 42" in printed and "実験,b" in printed


def history_ids(runs_dir: Path) -> list[str]:
    db = TinyDB(runs_dir / "history.json")
    try:
        return sorted(doc["run_id"] for doc in db.table("runs").all())
    finally:
        db.close()


def test_list_show_tag_and_rm_a_real_run(runs_dir, data_dir):
    result = dtvg("run", "stage1", "rte", *TINY, "--runs-dir", runs_dir, "--data-dir", data_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    (run_id,) = [name for name in run_folders(runs_dir) if not name.startswith("_")]

    listed = dtvg("runs", "list", "--json", "--runs-dir", runs_dir)
    assert listed.returncode == 0, listed.stderr
    docs = json.loads(listed.stdout)
    assert [d["run_id"] for d in docs] == [run_id]
    assert docs[0]["status"] == "completed" and docs[0]["task"] == "rte" and docs[0]["step"] == 2
    assert isinstance(docs[0]["best_metric"], float)
    only_failed = dtvg("runs", "list", "--json", "--status", "failed", "--runs-dir", runs_dir)
    assert json.loads(only_failed.stdout) == []

    shown = dtvg("runs", "show", "stage1-rte", "--json", "--runs-dir", runs_dir)  # a unique part of the id
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["run_id"] == run_id and doc["config"]["task"] == "rte" and "split" in doc["config"]

    tpv = dtvg("tpv", "show", run_id, "--json", "--runs-dir", runs_dir)
    assert tpv.returncode == 0, tpv.stderr
    info = json.loads(tpv.stdout)
    assert info["task"] == "rte" and info["shape"] == [4, 64] and info["init_id"] == "tiny-llama-r4-s0"

    tagged = dtvg("runs", "tag", run_id, "a", "b", "--runs-dir", runs_dir)
    assert tagged.returncode == 0, tagged.stderr
    assert tagged.stdout.split() == ["a", "b"]
    listed = json.loads(dtvg("runs", "list", "--json", "--runs-dir", runs_dir).stdout)
    assert listed[0]["tags"] == ["a", "b"]
    untagged = dtvg("runs", "tag", run_id, "-a", "--runs-dir", runs_dir)  # "-a" removes tag a
    assert untagged.returncode == 0, untagged.stdout + untagged.stderr
    assert untagged.stdout.split() == ["b"]
    assert json.loads(dtvg("runs", "show", run_id, "--json", "--runs-dir", runs_dir).stdout)["tags"] == ["b"]

    assert history_ids(runs_dir) == [run_id]
    removed = dtvg("runs", "rm", run_id, "--runs-dir", runs_dir)
    assert removed.returncode == 0, removed.stderr
    assert not (runs_dir / run_id).exists()
    assert history_ids(runs_dir) == []
    assert json.loads(dtvg("runs", "list", "--json", "--runs-dir", runs_dir).stdout) == []


@pytest.fixture(scope="module")
def tuned_runs(tmp_path_factory, data_dir) -> Path:
    """A runs directory with finished tiny stage-1 runs of rte and mnli (one init, tiny-llama-r4-s0)."""
    runs_dir = tmp_path_factory.mktemp("tuned") / "runs"
    result = dtvg("run", "stage1", "rte", "mnli", *TINY, "--runs-dir", runs_dir, "--data-dir", data_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    return runs_dir


@pytest.mark.parametrize(
    ("option", "value"), [("--lambda", "nan"), ("--source-scale-lr", "-5"), ("--lr", "inf")]
)
def test_bad_stage2_numbers_are_exit_2_and_no_run(tuned_runs, data_dir, option, value):
    before = run_folders(tuned_runs)
    command = ["run", "stage2", "--target", "rte", "--sources", "mnli", *TINY, option, value]
    line = assert_bad_input(dtvg(*command, "--runs-dir", tuned_runs, "--data-dir", data_dir))
    assert f"{option} must be a finite number" in line and f"(got {float(value)})" in line
    assert run_folders(tuned_runs) == before


def test_nan_loss_from_the_source_scale_rate_names_it(tuned_runs, data_dir):
    """A source-scale rate that blows the loss up is named in the failure, not only --lr."""
    command = ["run", "stage2", "--target", "rte", "--sources", "mnli", "--method", "all-sources", *TINY]
    command += ["--steps", "3", "--source-scale-lr", "1e30", "--runs-dir", tuned_runs, "--data-dir", data_dir]
    result = dtvg(*command)
    assert result.returncode == 1, result.stdout + result.stderr
    shown = json.loads(dtvg("runs", "show", "all-sources", "--json", "--runs-dir", tuned_runs).stdout)
    assert shown["status"] == "failed"
    assert "loss became nan" in shown["error"] and "--source-scale-lr (now 1e+30)" in shown["error"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--scale", "nan"], "--scale must be a finite number (got nan)"),
        (["--scale", "-inf"], "--scale must be a finite number (got -inf)"),
        (["--out", "{tmp}"], "is a folder; give a file name such as"),
        (["--out", "{tmp}/a-file/prompt.safetensors"], "a-file is not a folder"),
    ],
)
def test_tpv_combine_refuses_bad_scale_and_out(tuned_runs, tmp_path, args, words):
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "combined.safetensors"
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    line = assert_bad_input(
        dtvg("tpv", "combine", "rte + mnli", "--out", out, *args, "--runs-dir", tuned_runs)
    )
    assert words.replace("{tmp}", str(tmp_path)) in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing written
