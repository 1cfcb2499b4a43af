"""`dtvg run pipeline`: a small study end to end, reuse on a second run, a killed worker, bad files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import assert_bad_input

from dtvg_engine.errors import UserError
from dtvg_engine.runs.launcher import wait_for_exit
from dtvg_engine.runs.runfolder import list_run_dirs, read_config
from dtvg_engine.runs.runowner import read_pid, run_owner
from dtvg_engine.runs.runstatus import summarize
from dtvg_engine.studies import studyprocess, studyresults
from dtvg_engine.studies.studyfile import load_experiment

STUDY = """
name = "tiny"
model = "tiny-llama"
prompt_length = 4
sources = ["mnli", "sst2"]
targets = ["rte"]
methods = ["pt", "dtvg", "dtvg:prefix"]
seeds = [0, 1]
jobs = 2
[stage1]
steps = 3
max_eval = 16
eval_every = 3
k_shot = 16
[stage2]
steps = 3
max_eval = 16
eval_every = 3
k_shot = 16
"""

ONE_RUN_STUDY = re.sub(r"methods = \[.*\]", 'methods = ["pt"]', STUDY).replace("[0, 1]", "[0]")
"""The same study with a single stage-2 run."""


def pipeline(experiment: Path, runs: Path, data_dir: Path) -> subprocess.CompletedProcess:
    args = ["run", "pipeline", str(experiment), "--runs-dir", str(runs), "--data-dir", str(data_dir)]
    return subprocess.run([sys.executable, "-m", "dtvg_engine.cli", *args], capture_output=True, text=True)


def test_pipeline_runs_the_study_then_reuses_it(tmp_path: Path, runs_dir: Path, data_dir: Path) -> None:
    experiment = tmp_path / "tiny.toml"
    experiment.write_text(STUDY)
    result = pipeline(experiment, runs_dir, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list_run_dirs(runs_dir)
    stages = sorted(read_config(r)["stage"] for r in runs)
    # mnli, sst2, rte per seed; 2 methods x 2 seeds: pt at rte's stage-1 settings is rte's own run
    assert stages == ["stage1"] * 4 + ["stage2"] * 4
    slots = sorted(tuple(read_config(r)["slot"].values()) for r in runs)  # each run records its slot
    assert slots == sorted(
        [("tiny", "stage1", task, "pt", None) for task in ("mnli", "sst2")]
        + [("tiny", "stage1", "rte", "pt", seed) for seed in (0, 1)]
        + [("tiny", "stage2", "rte", entry, seed) for entry in ("dtvg", "dtvg:prefix") for seed in (0, 1)]
    )
    groupings = []
    for run in runs:  # a grouped run's target vector T_t comes from its own seed's shots
        config = read_config(run)
        if config.get("method") == "dtvg":
            assert read_config(runs_dir / config["stage1_runs"]["rte"])["seed"] == config["seed"]
            groupings.append(config["grouping"])
    assert sorted(groupings) == ["greedy", "greedy", "prefix", "prefix"]  # both rules in one study
    assert all(summarize(r).status == "completed" for r in runs)
    results = json.loads((runs_dir / "tiny-results.json").read_text())
    rows = {(r["target"], r["method"]): r for r in results["rows"]}
    assert set(rows) == {("rte", "pt"), ("rte", "dtvg"), ("rte", "dtvg:prefix")}
    assert all(r["seeds"] == 2 and 0 <= r["mean"] <= 1 for r in rows.values())
    assert all(list(r["by_seed"]) == ["0", "1"] for r in rows.values())  # paired readings need the seed
    assert sum(bool(r.get("best")) for r in rows.values()) == 1
    own = {
        read_config(r)["seed"]: studyresults.test_score(r)
        for r in runs
        if read_config(r).get("task") == "rte"
    }
    assert rows["rte", "pt"]["by_seed"] == {str(seed): score for seed, score in own.items()}
    assert "| target | pt | dtvg | dtvg:prefix | constant |" in (runs_dir / "tiny-results.md").read_text()

    again = pipeline(experiment, runs_dir, data_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert list_run_dirs(runs_dir) == runs  # nothing retrained
    assert again.stdout.count("reused") == 8

    table = tmp_path / "results" / "tiny.json"
    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "dtvg_engine.cli",
            "runs",
            "report",
            str(experiment),
            "--runs-dir",
            str(runs_dir),
        ]
        + ["--json-out", str(table)],
        capture_output=True,
        text=True,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    written = json.loads(table.read_text())
    assert written["rows"] == results["rows"]  # one writer: the pipeline's table is the report's
    assert written["stage1"] == results["stage1"] and written["constant"] == results["constant"]
    assert list(written["constant"]) == ["rte"] and 0 < written["constant"]["rte"] <= 1
    stage1_runs = sorted((r["task"], r["role"], r["seed"]) for r in written["stage1"])
    assert stage1_runs == [
        ("mnli", "source", 0),
        ("rte", "target", 0),
        ("rte", "target", 1),
        ("sst2", "source", 0),
    ]
    assert all(0 <= r["test"] <= 1 and 0 < r["constant"] <= 1 for r in written["stage1"])
    text = report.stdout
    assert "# Study `tiny`: 6 finished stage-2 runs" in text
    assert "| target | pt | dtvg | dtvg:prefix | constant |" in text
    assert re.search(
        r"^\| rte \| accuracy \| [\d.]+ ± [\d.]+ \| [\d.]+ ± [\d.]+ \|", text, re.M
    )  # every metric
    assert re.search(
        r"^\| rte \(accuracy\) \| \**[\d.]+ ± [\d.]+.* \| [\d.]+ \|$", text, re.M
    )  # pt ... constant
    pattern = r"^## Similarity.*$|^## Source groups of `dtvg`$|^## Source groups of `dtvg:prefix`$"
    stage1, similarity, groups, prefix_groups = re.split(pattern, text, flags=re.M)
    assert "| rte | target, seed 0 | 16-shot |" in stage1 and "| rte | target, seed 1 | 16-shot |" in stage1
    matrices = similarity.split("## One-for-one")[0]
    for task in ("mnli", "sst2", "rte"):  # both matrices list every task (targets at the first seed)
        assert len(re.findall(rf"^\| {task} \|", matrices, flags=re.M)) == 2
    for pair in ("dtvg − pt", "dtvg − T_t"):  # seed-by-seed differences, for the study's methods only
        assert re.search(
            rf"^\| {pair} \| [+-]\d+\.\d \([+-]\d+\.\d, [+-]\d+\.\d\) \| \d / \d / \d \|$", text, re.M
        )
    assert "dtvg − spot" not in text
    for section in (groups, prefix_groups):  # each seed's group from step 1, for each rule
        assert len(re.findall(r"^\| rte \| [01] \| 1: ", section, flags=re.M)) == 2


def test_pipeline_resumes_a_killed_run(tmp_path: Path, runs_dir: Path, data_dir: Path) -> None:
    experiment = tmp_path / "tiny.toml"
    experiment.write_text(ONE_RUN_STUDY)
    assert pipeline(experiment, runs_dir, data_dir).returncode == 0
    (killed,) = [r for r in list_run_dirs(runs_dir) if read_config(r)["stage"] == "stage2"]
    assert wait_for_exit(read_pid(killed), timeout=30)  # the worker may still be exiting after its last event
    # Make it look like a worker that died mid-run: its last start has no finish and its pid is gone.
    events = (killed / "events.jsonl").read_text().splitlines()
    finish = max(i for i, line in enumerate(events) if '"run_finished"' in line)
    (killed / "events.jsonl").write_text("\n".join(events[:finish]) + "\n")
    assert summarize(killed).status == "killed"
    result = pipeline(experiment, runs_dir, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming {killed.name} (killed)" in result.stdout
    assert summarize(killed).status == "completed"


def test_a_second_pipeline_of_a_running_study_is_refused(
    tmp_path: Path, runs_dir: Path, data_dir: Path
) -> None:
    """Both would train the same slots: the second is refused in one line naming the first."""
    experiment = tmp_path / "tiny.toml"
    experiment.write_text(ONE_RUN_STUDY.replace("steps = 3", "steps = 5000", 1))  # stage 1 runs long
    args = ["run", "pipeline", str(experiment), "--runs-dir", str(runs_dir), "--data-dir", str(data_dir)]
    first = subprocess.Popen([sys.executable, "-m", "dtvg_engine.cli", *args], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while studyprocess.pipeline_pid(runs_dir, "tiny") != first.pid:
            assert first.poll() is None and time.monotonic() < deadline, "the first pipeline never started"
            time.sleep(0.1)
        second = assert_bad_input(pipeline(experiment, runs_dir, data_dir))
        assert f"study tiny is already running in {runs_dir}/ (pipeline pid {first.pid})" in second
        assert first.poll() is None
    finally:  # the first pipeline and its workers end (they checkpoint first)
        studyprocess.stop_study(load_experiment(experiment), runs_dir)
        first.wait(timeout=60)
        for run in list_run_dirs(runs_dir):
            assert wait_for_exit(run_owner(run) or 0, timeout=60)


def test_pipeline_runs_what_an_interrupted_pipeline_only_queued(
    tmp_path: Path, runs_dir: Path, data_dir: Path
) -> None:
    experiment = tmp_path / "tiny.toml"
    experiment.write_text(ONE_RUN_STUDY)
    assert pipeline(experiment, runs_dir, data_dir).returncode == 0
    (queued,) = [r for r in list_run_dirs(runs_dir) if read_config(r)["stage"] == "stage2"]
    assert wait_for_exit(read_pid(queued), timeout=30)
    # What a pipeline stopped before launching this run leaves: the folder and its config, nothing else.
    for name in os.listdir(queued):
        if name != "config.json":
            path = queued / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert summarize(queued).status == "pending"
    result = pipeline(experiment, runs_dir, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert summarize(queued).status == "completed"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda s: 'colour = "blue"\n' + s, "unknown key(s) colour"),
        (lambda s: s.replace('"rte"', '"nosuchtask"'), "unknown task 'nosuchtask'"),
        (lambda s: s.replace('"pt", "dtvg"', '"pt", "magic"'), "unknown method 'magic'"),
        (lambda s: s.replace('"dtvg:prefix"', '"dtvg:greedy"'), "dtvg and dtvg:greedy, which are the"),
        (lambda s: s.replace('"dtvg:prefix"', '"pt:prefix"'), "pt takes no grouping rule"),
        (lambda s: s.replace('targets = ["rte"]', 'targets = ["mnli"]'), "both source and target"),
        (lambda s: s.replace("steps = 3\nmax_eval", "stepz = 3\nmax_eval", 1), "unknown key(s) in [stage1]"),
        (lambda s: s.replace("[stage1]", "[stage1"), "not valid TOML"),
        (lambda s: s.replace('"tiny"', '"../../x"'), "name must be a plain file name"),
        (lambda s: s.replace('"tiny"', '"/tmp/x"'), "name must be a plain file name"),
        (lambda s: s.replace('"tiny"', "7"), "name must be a plain file name"),
        (lambda s: s.replace("[0, 1]", '"zero"'), "seeds must be a non-empty list of integers"),
        (lambda s: s.replace("[0, 1]", "[0, 0]"), "seeds lists 0 more than once"),
        (lambda s: s.replace("[0, 1]", "[-1]"), "seeds must be an integer from 0 to 4294967295 (got -1)"),
        (lambda s: s.replace('targets = ["rte"]', 'targets = "rte"'), "targets must be a non-empty list"),
        (lambda s: s.replace("prompt_length = 4", "prompt_length = 8.5"), "prompt_length must be an integer"),
        (lambda s: s.replace("prompt_length = 4", "prompt_length = 100000"), "prompt_length must be"),
        (
            lambda s: s.replace("jobs = 2", 'jobs = "two"'),
            "bad.toml: jobs must be a",  # a positive integer (or auto)
        ),
        (lambda s: s.replace('model = "tiny-llama"', "model = 3"), "model must be a string (got 3)"),
        (lambda s: 'device = "gpu"\n' + s, "device must be one of auto, cpu, cuda (got 'gpu')"),
        (lambda s: s.replace("k_shot = 16\n[stage2]", "k_shot = 16.5\n[stage2]"), "[stage1] k_shot must be"),
        (lambda s: s + "lambda = nan\n", "[stage2] lambda must be a finite number of at least 0 (got nan)"),
        (lambda s: s + "source_scale_lr = -5\n", "[stage2] source_scale_lr must be a finite number"),
        (lambda s: s + "lr = inf\n", "[stage2] lr must be a finite number above 0 (got inf)"),
        (
            lambda s: s.replace("[stage2]\nsteps = 3", "[stage2]\nsteps = true"),
            "[stage2] steps must be an integer",
        ),
        (lambda s: s.split("[stage1]")[0] + "stage1 = 5\n", "stage1 must be a table"),
    ],
)
def test_bad_experiment_files_are_refused(tmp_path: Path, change, words: str) -> None:
    experiment = tmp_path / "bad.toml"
    experiment.write_text(change(STUDY))
    with pytest.raises(UserError, match=re.escape(words)):
        load_experiment(experiment)


@pytest.mark.parametrize(
    "change",
    [
        lambda s: "colour = 1\n" + s,
        lambda s: s.replace('"tiny"', '"../escaped"'),
        lambda s: s.replace('"tiny"', '"{tmp}/escaped"'),
        lambda s: s.replace("jobs = 2", 'jobs = "two"'),
    ],
)
def test_bad_experiment_file_exits_2_without_runs(
    tmp_path: Path, runs_dir: Path, data_dir: Path, change
) -> None:
    experiment = tmp_path / "bad.toml"
    experiment.write_text(change(STUDY).replace("{tmp}", str(tmp_path)))
    result = pipeline(experiment, runs_dir, data_dir)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr
    assert list_run_dirs(runs_dir) == []
    assert not list(tmp_path.glob("escaped*"))  # no results written outside the runs directory


def test_a_failed_run_makes_the_pipeline_exit_1(tmp_path: Path, runs_dir: Path, data_dir: Path) -> None:
    """Exit 0 only when every run completed; results of a dotted name land at <name>-results.md as named."""
    study = ONE_RUN_STUDY.replace('"tiny"', '"tiny.v2"').replace('["mnli", "sst2"]', '["mnli"]')
    experiment = tmp_path / "failing.toml"
    experiment.write_text(study + "lr = 1e30\n")  # the stage-2 run's loss becomes NaN
    result = pipeline(experiment, runs_dir, data_dir)
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    (failed,) = [r for r in list_run_dirs(runs_dir) if summarize(r).status != "completed"]
    assert read_config(failed)["stage"] == "stage2" and summarize(failed).status == "failed"
    assert f"1 run(s) did not complete: {failed.name} (failed)" in result.stdout
    md, js = runs_dir / "tiny.v2-results.md", runs_dir / "tiny.v2-results.json"
    assert f"results: {md} and {js}" in result.stdout
    assert json.loads(js.read_text())["unfinished"] == {failed.name: "failed"}
    assert sorted(p.name for p in runs_dir.glob("tiny*")) == sorted([md.name, js.name])


def test_a_data_dir_spelled_through_a_symlink_reuses_the_runs(runs_dir: Path, data_dir: Path, tmp_path: Path):
    """The dashboard resumes a study with `--data-dir` (resolved) where its file names the data through
    a symlink: the stopped run must be found again, not trained a second time in a new folder."""
    from dtvg_engine import config as configs
    from dtvg_engine.studies.pipeline import reuse_or_create

    link = tmp_path / "data-link"
    link.symlink_to(data_dir)
    as_written = configs.stage1_config("rte", model="tiny-llama", steps=2, data_dir=str(link))
    first, status = reuse_or_create(runs_dir, "stage1", "rte", as_written)
    assert status == "new"
    resolved = {**as_written, "data_dir": str(data_dir.resolve())}
    assert reuse_or_create(runs_dir, "stage1", "rte", resolved)[0] == first  # still to run, in its folder
    other = {**as_written, "data_dir": str(tmp_path)}  # other data are other runs
    assert reuse_or_create(runs_dir, "stage1", "rte", other)[0] != first


def test_a_study_that_left_no_trace_leaves_no_lock_and_its_next_claim_is_sound(tmp_path: Path) -> None:
    """`forget_study` (sbatch refused a study's first jobs) removes the study's lock file too, unless a
    pipeline holds it; a claim never counts a lock on a file that was removed from under it."""
    runs = tmp_path / "runs"
    with studyprocess.claim_study(runs, "s"):
        studyprocess.forget_study(runs, "s")  # held: the lock file stays
        assert (runs / studyprocess.PIPELINES_DIR / "s.lock").exists()
    studyprocess.forget_study(runs, "s")
    assert sorted(runs.iterdir()) == []  # free: nothing left, not even _pipelines/
    stale = os.open(tmp_path / "old.lock", os.O_RDWR | os.O_CREAT)  # a lock on a file no longer there
    try:
        assert not studyprocess._lock_current(stale, tmp_path / "gone.lock")
        with studyprocess.claim_study(runs, "s"), pytest.raises(UserError, match="already running"):
            with studyprocess.claim_study(runs, "s"):
                pass
    finally:
        os.close(stale)
