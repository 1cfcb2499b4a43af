"""dtvg_engine.studies.study and dtvg_engine.method.tpv_plain: a study as its run folders show it, without the
ML stack.

The recorded study (`tests/fixtures/study/`, made by `tests/fixtures/record_study.py` with the real
pipeline) is read both by `dtvg runs report` and by the study module the dashboard uses: their tables
must be the same text. Progress states come from run folders derived from the recorded ones (a run with
no events, one whose worker is alive, one whose worker died, a stopped one).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_bad_input, dtvg
from live_worker import stand_in_worker
from safetensors.torch import save_file

from dtvg_engine.errors import UserError
from dtvg_engine.method import grouping, tpv_plain
from dtvg_engine.runs.runfolder import EVENTS, PIDFILE, TPV, read_config
from dtvg_engine.runs.runstatus import RunSummary
from dtvg_engine.studies import study, studyprocess, studyprogress, studyresults
from dtvg_engine.studies.studyfile import StudySpec
from dtvg_engine.train import metrics, tasks

RECORDED = Path(__file__).resolve().parent / "fixtures" / "study"
SPEC_FILE = RECORDED / "tiny-study.toml"


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """A writable copy of the recorded study's runs directory."""
    copy = tmp_path / "runs"
    shutil.copytree(RECORDED / "runs", copy)
    return copy


def spec() -> dict:
    return studyprocess.load_study(SPEC_FILE)[0]


def run_dir(runs: Path, suffix: str) -> Path:
    (match,) = [p for p in runs.iterdir() if p.name.endswith(suffix)]
    return match


# ----- the similarity of the stage-1 vectors, without torch ----------------------------------------------


def flat(matrix: list[list[float]]) -> list[float]:
    return [value for row in matrix for value in row]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_plain_similarity_is_the_engines_eq2(tmp_path: Path, dtype: torch.dtype) -> None:
    vectors = {name: torch.randn(5, 7) for name in ("a", "b", "c")}
    files = {}
    for name, vector in vectors.items():
        files[name] = tmp_path / f"{name}.safetensors"
        save_file({"tpv": vector.to(dtype)}, files[name])
    names, plain = tpv_plain.similarity_matrix(files)
    _, engine = grouping.similarity_matrix({n: v.to(dtype).double() for n, v in vectors.items()})
    assert names == ["a", "b", "c"]
    assert flat(plain) == pytest.approx(flat(engine), rel=1e-9, abs=1e-12)


def test_plain_similarity_of_the_recorded_vectors() -> None:
    files = {p.parent.name: p for p in sorted((RECORDED / "runs").glob(f"*stage1*/{TPV}"))}
    _, plain = tpv_plain.similarity_matrix(files)
    from dtvg_engine.method.tpv import load_tpv

    _, engine = grouping.similarity_matrix({name: load_tpv(path)[0] for name, path in files.items()})
    assert flat(plain) == pytest.approx(flat(engine), rel=1e-5)


def test_plain_reader_refuses_what_is_no_tpv(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        tpv_plain.token_sum(tmp_path / "nope.safetensors")
    other = tmp_path / "prompt.safetensors"
    save_file({"prompt": torch.zeros(2, 2)}, other)
    with pytest.raises(UserError, match="no 'tpv' tensor"):
        tpv_plain.token_sum(other)
    ints = tmp_path / "ints.safetensors"
    save_file({"tpv": torch.zeros(2, 2, dtype=torch.int32)}, ints)
    with pytest.raises(UserError, match="not a float type"):
        tpv_plain.token_sum(ints)
    good = tmp_path / "good.safetensors"
    save_file({"tpv": torch.ones(4, 8)}, good)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-12])  # three floats short
    with pytest.raises(UserError, match="holds 29 values for shape \\[4, 8\\]"):
        tpv_plain.token_sum(cut)
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 40)
    with pytest.raises(UserError, match="not a safetensors file"):
        tpv_plain.token_sum(tmp_path / "junk.safetensors")
    other_shape = tmp_path / "other.safetensors"
    save_file({"tpv": torch.ones(3, 8)}, other_shape)
    with pytest.raises(UserError, match="different inits"):
        tpv_plain.similarity_matrix({"a": good, "b": other_shape})


def test_the_study_modules_import_no_ml_stack() -> None:
    modules = (
        "dtvg_engine.studies.studyprocess, dtvg_engine.method.tpv_plain"  # studyprocess imports the others
    )
    code = f"import json, sys, {modules}; print(json.dumps(sorted(sys.modules)))"
    loaded = set(json.loads(subprocess.check_output([sys.executable, "-c", code])))
    assert not loaded & {"torch", "numpy", "transformers", "peft", "datasets", "safetensors"}


# ----- the constant-prediction floor ---------------------------------------------------------------------


def test_constant_score_by_hand() -> None:
    assert metrics.constant_score(tasks.get_task("rte"), [0, 0, 1]) == pytest.approx(2 / 3)  # majority class
    # mrpc scores the mean of accuracy and F1: "equivalent" (1) gives 0.5 and F1 2/3; 0 gives 0.5 and 0
    assert metrics.constant_score(tasks.get_task("mrpc"), [1, 1, 0, 0]) == pytest.approx((0.5 + 2 / 3) / 2)
    assert metrics.constant_score(tasks.get_task("cola"), [1, 0, 1]) == 0.0  # MCC of a constant is 0


def test_runs_record_the_floor_the_report_computes_from_the_data() -> None:
    """The floor each run records with its split is what `report.constant_score` gets from the data."""
    from dtvg_engine.studies.report import constant_score

    for path in [
        run_dir(RECORDED / "runs", "stage2-rte-pt-s1"),
        run_dir(RECORDED / "runs", "stage2-mrpc-dtvg-s0"),
    ]:
        config = read_config(path)
        recorded = studyresults.recorded_constant(config)
        assert recorded is not None and recorded == pytest.approx(constant_score(path))


# ----- the recorded study: the same table as the report ----------------------------------------------------


def test_the_recorded_study_is_complete(runs: Path) -> None:
    found = study.find_study(spec(), study.Runs.read(runs))
    assert len(found.runs) == 2 * 4 * 2  # targets x methods x seeds
    assert {key[1] for key in found.runs} == {"pt", "tpv-top1", "dtvg", "dtvg:prefix"}
    assert read_config(found.runs["rte", "dtvg:prefix", 1])["grouping"] == "prefix"
    assert set(found.sources) == {"mnli", "qnli", "sst2"} and len(found.targets) == 4
    slots = studyprogress.fill(spec(), study.Runs.read(runs))
    assert len(slots) == 3 + 2 * 2 + 16 and studyprogress.counts(slots)["done"] == len(slots)
    assert studyprogress.seconds_left(spec(), slots, study.Runs.read(runs)) == 0.0


def test_report_and_json_out_are_the_study_table(runs: Path, tmp_path: Path) -> None:
    """`dtvg runs report` writes the study module's table: its Markdown inside the report, its JSON as
    `--json-out` (the dashboard exports the same two texts)."""
    table = tmp_path / "table.json"
    command = [
        sys.executable,
        "-m",
        "dtvg_engine.cli",
        "runs",
        "report",
        str(SPEC_FILE),
        "--runs-dir",
        str(runs),
    ]
    report = subprocess.run([*command, "--json-out", str(table)], capture_output=True, text=True, check=True)
    runs_ = study.Runs.read(runs)
    found = study.find_study(spec(), runs_)
    results = studyresults.results(
        found, runs_, studyresults.test_score, lambda path: studyresults.recorded_constant(read_config(path))
    )
    assert results.markdown in report.stdout
    assert json.loads(table.read_text()) == results.document()
    assert all(row["seeds"] == 2 for row in results.document()["rows"])
    shape = {"target", "method", "metric", "mean", "std", "seeds", "by_seed"}  # transfer.json's: no "metrics"
    assert all(row.keys() - {"best"} == shape for row in json.loads(table.read_text())["rows"])
    assert len(results.document()["stage1"]) == 3 + 4 and None not in results.constants.values()
    assert "—" not in results.markdown  # every cell, the floor and the averages have a value


def test_a_stage1_run_that_stage2_runs_need_is_removed_only_with_force(runs: Path) -> None:
    """`runs rm` warns and refuses; once removed (--force), the report and `runs show` of a stage-2
    run that transferred from it say it is missing."""
    source = run_dir(runs, "stage1-mnli")
    refused = assert_bad_input(dtvg("runs", "rm", source.name, "--runs-dir", runs))  # not pt's 4
    assert f"run {source.name} is the stage-1 run of 12 stage-2 run(s)" in refused and "--force" in refused
    assert source.is_dir()
    removed = dtvg("runs", "rm", source.name, "--force", "--runs-dir", runs)
    assert removed.returncode == 0 and not source.exists()
    assert removed.stderr.startswith(f"warning: run {source.name} is the stage-1 run of 12 stage-2 run(s)")
    reported = dtvg("runs", "report", SPEC_FILE, "--runs-dir", runs)
    assert reported.returncode == 0, reported.stderr
    assert (
        f"Missing: stage-1 run {source.name} (mnli), which stage-2 runs transferred from" in reported.stdout
    )
    assert "| mnli | source |" not in reported.stdout and "| qnli | source |" in reported.stdout
    assert "# Study `tiny-study`: 16 finished stage-2 runs" in reported.stdout  # every run still counts
    target = run_dir(runs, "stage2-rte-dtvg-s0")
    shown = dtvg("runs", "show", target.name, "--json", "--runs-dir", runs)
    assert json.loads(shown.stdout)["missing_stage1_runs"] == {"mnli": source.name}
    shown = dtvg("runs", "show", target.name, "--runs-dir", runs)
    assert f"missing_stage1_runs: {source.name} (mnli)" in shown.stdout
    own = run_dir(runs, "stage1-rte-s0")  # a target's own run (T_t) too
    assert "--force" in assert_bad_input(dtvg("runs", "rm", own.name, "--runs-dir", runs))


def test_test_score_is_the_last_test_eval_even_far_from_the_end(runs: Path) -> None:
    from dtvg_engine.runs.events import read_state

    path = run_dir(runs, "stage2-rte-dtvg-s0")
    expected = read_state(path / EVENTS).last_eval["test"].primary  # the whole file, parsed
    assert studyresults.test_score(path) == expected is not None
    with open(path / EVENTS, "a") as f:  # 100 KB of log lines after the test eval
        for _ in range(1000):
            f.write(
                json.dumps({"v": 1, "type": "log", "time": 1.0, "level": "info", "message": "x" * 90}) + "\n"
            )
    assert studyresults.test_score(path) == expected


# ----- progress -------------------------------------------------------------------------------------------


def test_progress_states_of_derived_runs(runs: Path) -> None:
    """A run folder with no events is queued; one a worker owns is running; one whose worker died is
    failed (killed); a stopped one is stopped; a run missing altogether is queued."""
    queued = run_dir(runs, "stage2-rte-tpv-top1-s0")  # as a pipeline leaves the runs it has not launched yet
    (queued / EVENTS).unlink()
    (queued / PIDFILE).unlink()
    launched = run_dir(runs, "stage2-rte-tpv-top1-s1")
    (launched / EVENTS).unlink()
    with stand_in_worker(launched) as worker:  # launched, still loading
        (launched / PIDFILE).write_text(f"{worker.pid}\n")
        died = run_dir(runs, "stage2-mrpc-dtvg-s1")
        lines = (died / EVENTS).read_text().splitlines()
        (died / EVENTS).write_text("\n".join(lines[:5]) + "\n")  # run_started ... , no finish
        stopped = run_dir(runs, "stage2-mrpc-dtvg-s0")
        events = [json.loads(line) for line in (stopped / EVENTS).read_text().splitlines()]
        finish = {**events[-1], "status": "stopped", "error": None}
        (stopped / EVENTS).write_text("".join(json.dumps(e) + "\n" for e in [*events[:-1], finish]))
        shutil.rmtree(run_dir(runs, "stage2-mrpc-tpv-top1-s0"))
        plan = studyprogress.fill(spec(), study.Runs.read(runs))
        slots = {(s.task, s.method, s.seed): s for s in plan if s.stage == "stage2"}
    assert slots["rte", "tpv-top1", 0].state == "queued" and slots["rte", "tpv-top1", 0].run_id == queued.name
    assert slots["rte", "tpv-top1", 1].state == "running"
    assert slots["mrpc", "dtvg", 1].state == "failed"
    assert slots["mrpc", "dtvg", 0].state == "stopped"
    assert slots["mrpc", "tpv-top1", 0].state == "queued" and slots["mrpc", "tpv-top1", 0].run_id is None
    counts = studyprogress.counts(plan)
    assert counts == {"done": 18, "running": 1, "queued": 2, "stopped": 1, "failed": 1}


def test_a_run_tuned_from_another_seeds_vector_is_not_the_studys(runs: Path) -> None:
    """A grouped run must start from its own seed's T_t (the report has always refused the others)."""
    path = run_dir(runs, "stage2-rte-dtvg-s1")
    config = read_config(path)
    config["stage1_runs"]["rte"] = run_dir(runs, "stage1-rte-s0").name
    (path / "config.json").write_text(json.dumps(config))
    found = study.find_study(spec(), study.Runs.read(runs))
    assert ("rte", "dtvg", 1) not in found.runs and ("rte", "dtvg", 0) in found.runs


def summary(run_id: str, status: str, steps: int, step: int = 0, duration: float | None = None) -> RunSummary:
    return RunSummary(
        run_id, "stage2", "pt", "rte", "m", status, step=step, total_steps=steps, duration=duration
    )


def test_seconds_left_from_the_measured_rate() -> None:
    """Two finished runs took 10 s for 10 steps (1 s a step): what is left is the running run's 5 steps and
    two queued runs of 10, shared by `jobs`; stage 1, with nothing finished, borrows stage 2's rate."""
    tables = {"stage2": {"steps": 10}, "stage1": {"steps": 4}, "jobs": 1}
    plan = StudySpec.of(
        {"name": "s", "sources": ["mnli"], "targets": ["rte", "cb"], "methods": ["pt"]} | tables
    )
    summaries = {
        "a": summary("a", "completed", 10, 10, 10.0),
        "b": summary("b", "completed", 10, 10, 10.0),
        "c": summary("c", "running", 10, 5, 6.0),
    }
    runs = study.Runs(Path("."), {}, summaries.get)
    slots = [
        studyprogress.Filled("stage2", "rte", "pt", 0, "a", "done"),
        studyprogress.Filled("stage2", "rte", "pt", 1, "b", "done"),
        studyprogress.Filled("stage2", "rte", "dtvg", 0, "c", "running"),
        studyprogress.Filled("stage2", "rte", "dtvg", 1, None, "queued"),
        studyprogress.Filled("stage2", "cb", "dtvg", 1, None, "queued"),
        studyprogress.Filled("stage1", "rte", "pt", 0, None, "queued"),
        studyprogress.Filled("stage2", "cb", "pt", 1, None, "failed"),
        # the run of another slot:
        studyprogress.Filled("stage2", "rte", "dtvg", 1, None, "queued", shared=True),
    ]
    assert studyprogress.seconds_left(plan, slots, runs) == pytest.approx(5 + 10 + 10 + 4)
    assert studyprogress.seconds_left(dataclasses.replace(plan, jobs=2), slots, runs) == pytest.approx(29 / 2)
    assert studyprogress.seconds_left(plan, slots[3:], runs) is None  # nothing measured yet


# ----- finding studies and their pipelines ---------------------------------------------------------------


def test_find_studies(tmp_path: Path, runs: Path) -> None:
    """Pipeline files in a folder, the study the runs directory's pipeline recorded, results alone."""
    folder = tmp_path / "experiments"
    folder.mkdir()
    shutil.copy(SPEC_FILE, folder / "tiny-study.toml")
    (folder / "broken.toml").write_text("name = ")
    other = dataclasses.replace(spec(), name="elsewhere")
    record = {"file": "/gone.toml", "spec": other.record()}
    studyprocess.record_path(runs, "elsewhere").write_text(json.dumps(record))
    (runs / "old-results.json").write_text("{}")
    found = {s.name: s for s in studyprocess.find_studies(runs, [folder])}
    assert set(found) == {"tiny-study", "elsewhere", "old"}
    assert found["tiny-study"].path == folder / "tiny-study.toml" and found["tiny-study"].results
    assert (
        found["elsewhere"].path == studyprocess.record_path(runs, "elsewhere")
        and not found["elsewhere"].results
    )
    assert found["old"].path is None
    assert studyprocess.load_study(found["elsewhere"].path) == (other, None)  # its file is gone


def test_the_recorded_pipeline_left_its_study(runs: Path) -> None:
    recorded, _ = studyprocess.read_record(studyprocess.record_path(runs, "tiny-study"))
    assert recorded.methods == spec().methods and recorded.shared["data_dir"]  # --data-dir kept


def test_a_pid_is_a_pipelines_only_while_it_runs_one(runs: Path) -> None:
    pidfile = runs / studyprocess.PIPELINES_DIR / "tiny-study.pid"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        pidfile.write_text(f"{sleeper.pid}\n")
        assert studyprocess.pipeline_pid(runs, "tiny-study") is None  # alive, but no pipeline
    finally:
        sleeper.kill()
        sleeper.wait()
    assert studyprocess.pipeline_pid(runs, "tiny-study") is None
    assert studyprocess.pipeline_pid(runs, "no-such-study") is None
