"""The study view driven with Textual's pilot on the study recorded with the real pipeline.

What it shows is checked against `dtvg_engine.studies.study` and `dtvg runs report` on the same runs; its
export against the report's own output; its progress against runs made live from the recorded ones; and its
start/stop keys against a real tiny pipeline.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from live_worker import stand_in_worker

from dtvg_engine.method import tpv_plain
from dtvg_engine.runs.events import EventWriter
from dtvg_engine.runs.runfolder import TPV, read_config
from dtvg_engine.runs.runstatus import summarize
from dtvg_engine.studies import study, studyprocess, studyresults
from dtvg_tui.app import DtvgApp
from dtvg_tui.screens.compare import CompareScreen
from dtvg_tui.screens.detail import RunDetailScreen
from dtvg_tui.screens.inspector import InspectorScreen
from dtvg_tui.screens.study import StudiesScreen, StudyCellScreen, StudyScreen

from .helpers import kill_group, replay, run_id, screen_text, sync, wait_until
from .study_helpers import STUDY_FILE, settle_study, study_runs  # noqa: F401 - a fixture

SIZE = (150, 45)


def make_app(runs: Path, **kwargs) -> DtvgApp:  # noqa: ANN003
    return DtvgApp(runs, refresh_interval=0.3, follow_interval=0.1, study=STUDY_FILE, **kwargs)


def expected(runs: Path) -> studyresults.Results:
    """The table as the study module computes it from the folders (as `dtvg runs report` does)."""
    spec, runs_ = studyprocess.load_study(STUDY_FILE)[0], study.Runs.read(runs)
    found = study.find_study(spec, runs_)
    return studyresults.results(
        found, runs_, studyresults.test_score, lambda path: studyresults.recorded_constant(read_config(path))
    )


def put_cursor(screen: StudyScreen, target: str, method: str) -> None:
    row = screen.spec.targets.index(target)
    column = 1 + screen.spec.methods.index(method)
    screen.query_one("#study-table").move_cursor(row=row, column=column)


@sync
async def test_the_table_is_the_studys(study_runs: Path):  # noqa: F811
    async with make_app(study_runs).run_test(size=SIZE) as pilot:
        await settle_study(pilot)
        text = screen_text(pilot.app)
        assert "23/23 done" in text and "complete" in text
        results = expected(study_runs)
        for row in results.rows:
            assert f"{studyresults.pct(row['mean'])} ± {studyresults.pct(row['std'])}  2/2" in text
        for floor in results.floors:
            assert studyresults.pct(floor) in text
        table = pilot.app.screen.query_one("#study-table")
        for row in results.rows:  # one best cell per target, starred
            assert ("★" in table.get_cell(row["target"], row["method"]).plain) == bool(row.get("best"))
        assert sum(bool(row.get("best")) for row in results.rows) == 2
        assert "rte (accuracy)" in text and "mean ± std over seeds; line: constant prediction" in text


@sync
async def test_a_cell_opens_its_runs_and_from_there_detail_inspector_compare(study_runs: Path):  # noqa: F811
    async with make_app(study_runs).run_test(size=SIZE) as pilot:
        await settle_study(pilot)
        view = pilot.app.screen
        put_cursor(view, "rte", "dtvg:prefix")
        await pilot.press("enter")
        await pilot.pause(0.3)
        cell = pilot.app.screen
        assert isinstance(cell, StudyCellScreen)
        assert [d.name.split("-", 2)[2] for d in cell.run_dirs] == [
            "stage2-rte-dtvg-prefix-s0",
            "stage2-rte-dtvg-prefix-s1",
        ]
        text = screen_text(pilot.app)
        assert "dtvg:prefix → rte" in text and "2 of 2 seeds finished" in text
        await pilot.press("enter")
        await pilot.pause(0.5)
        assert isinstance(pilot.app.screen, RunDetailScreen)
        assert pilot.app.screen.run_dir == cell.run_dirs[0]
        await pilot.press("escape", "down", "i")
        await pilot.pause(0.5)
        assert isinstance(pilot.app.screen, InspectorScreen)
        assert pilot.app.screen.run_dir == cell.run_dirs[1]
        await pilot.press("escape", "c")
        await pilot.pause(0.5)
        assert isinstance(pilot.app.screen, CompareScreen)
        assert pilot.app.screen.run_dirs == cell.run_dirs
        await pilot.press("escape", "escape")
        await pilot.pause(0.2)
        assert pilot.app.screen is view


@sync
async def test_c_compares_the_rows_methods(study_runs: Path):  # noqa: F811
    async with make_app(study_runs).run_test(size=SIZE) as pilot:
        await settle_study(pilot)
        put_cursor(pilot.app.screen, "mrpc", "pt")
        await pilot.press("c")
        await pilot.pause(0.5)
        compare = pilot.app.screen
        assert isinstance(compare, CompareScreen)
        configs = [read_config(d) for d in compare.run_dirs]
        assert [(c.get("target", c.get("task")), c["seed"]) for c in configs] == [("mrpc", 0)] * 4
        assert configs[0]["stage"] == "stage1"  # pt at its T_t's settings is that run
        entries = [study.slot_of(c, studyprocess.load_study(STUDY_FILE)[0])[2] for c in configs[1:]]
        assert entries == ["tpv-top1", "dtvg", "dtvg:prefix"]


@sync
async def test_stage1_similarity_and_groups_tabs(study_runs: Path):  # noqa: F811
    async with make_app(study_runs).run_test(size=SIZE) as pilot:
        await settle_study(pilot)
        await pilot.press("2")
        await pilot.pause(0.3)
        text = screen_text(pilot.app)
        assert text.count("target, seed") == 4 and text.count(" source ") >= 3
        snapshot = pilot.app.screen.snapshot
        rows = [row for _, row in snapshot.stage1]
        assert all(row is not None and row.test is not None for row in rows)
        assert all(f"{studyresults.pct(row.test)}" in text for row in rows)

        await pilot.press("3")
        await pilot.pause(0.3)
        names, matrix = snapshot.similarity
        assert names == ["mnli", "qnli", "sst2", "rte", "mrpc"]  # sources, then each target's seed-0 T_t
        suffixes = {"mnli": "mnli", "qnli": "qnli", "sst2": "sst2", "rte": "rte-s0", "mrpc": "mrpc-s0"}
        files = {name: study_runs / run_id(study_runs, f"stage1-{suffixes[name]}") / TPV for name in names}
        assert matrix == tpv_plain.similarity_matrix(files)[1]
        assert "Task similarity" in screen_text(pilot.app) and f"{matrix[0][1]:+.4g}" in screen_text(
            pilot.app
        )

        await pilot.press("4")
        await pilot.pause(0.3)
        groups = {(g.target, g.method): g for g in snapshot.groups}
        assert set(groups) == {(t, m) for t in ("rte", "mrpc") for m in ("dtvg", "dtvg:prefix")}
        for (target, method), row in groups.items():
            runs = [s for s in snapshot.slot_runs(target, method)]
            shares = [
                studyresults.source_shares(
                    studyresults.group_steps(study_runs / s.run_id), ["mnli", "qnli", "sst2"]
                )
                for s in runs
            ]
            assert row.seeds == 2
            assert row.shares == [sum(col) / 2 for col in zip(*shares, strict=True)]
        assert "mnli in" in screen_text(pilot.app)


@sync
async def test_S_lists_the_studies_and_opens_one(study_runs: Path, tmp_path: Path):  # noqa: F811, N802
    experiments = tmp_path / "experiments"  # next to the runs directory
    experiments.mkdir()
    shutil.copy(STUDY_FILE, experiments / "tiny-study.toml")
    app = DtvgApp(study_runs, refresh_interval=0.3, follow_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.5)
        await pilot.press("S")
        await pilot.pause(0.5)
        screen = pilot.app.screen
        assert isinstance(screen, StudiesScreen)
        names = [s.name for s in screen.studies]
        assert "tiny-study" in names
        found = screen.studies[names.index("tiny-study")]
        assert found.path == experiments / "tiny-study.toml" and found.results
        screen.query_one("#studies-table").move_cursor(row=names.index("tiny-study"))
        await pilot.press("enter")
        await settle_study(pilot)
        assert isinstance(pilot.app.screen, StudyScreen)
        assert pilot.app.screen.spec.name == "tiny-study"


@sync
async def test_export_writes_exactly_what_the_report_writes(study_runs: Path, tmp_path: Path):  # noqa: F811
    async with make_app(study_runs).run_test(size=SIZE) as pilot:
        await settle_study(pilot)
        await pilot.press("e")
        await pilot.pause(0.3)
    table = tmp_path / "report.json"
    args = ["runs", "report", str(STUDY_FILE), "--runs-dir", str(study_runs), "--json-out", str(table)]
    report = subprocess.run(
        [sys.executable, "-m", "dtvg_engine.cli", *args], capture_output=True, text=True, check=True
    )
    exported_md = (study_runs / "tiny-study-table.md").read_text()
    assert exported_md.startswith("## Test score") and exported_md in report.stdout
    assert (study_runs / "tiny-study-table.json").read_text() == table.read_text()
    assert json.loads(table.read_text())["name"] == "tiny-study"


@sync
async def test_progress_follows_runs_as_they_start_and_finish(study_runs: Path):  # noqa: F811
    """Two dtvg runs of rte are taken out: the study is 21 of 23 done and their cell has no score. One of
    them comes back as a live worker writes it (its events replayed through the engine's writer): the
    view shows it running, then done, and the cell's score over its one seed."""
    holding = study_runs.parent / "held"
    holding.mkdir()
    taken = sorted(p for p in study_runs.iterdir() if "stage2-rte-dtvg-s" in p.name)
    for path in taken:
        shutil.move(path, holding / path.name)
    async with make_app(study_runs).run_test(size=SIZE) as pilot:
        await settle_study(pilot)
        view = pilot.app.screen
        assert view.snapshot.counts == {"done": 21, "running": 0, "queued": 2, "stopped": 0, "failed": 0}
        assert "21/23 done" in screen_text(pilot.app)
        assert view.query_one("#study-table").get_cell("rte", "dtvg").plain.startswith("—  0/2")

        source = holding / taken[0].name
        shutil.copytree(source, study_runs / source.name)
        (study_runs / source.name / "events.jsonl").unlink()
        events = [json.loads(line) for line in (source / "events.jsonl").read_text().splitlines()]
        finish = next(i for i, e in enumerate(events) if e["type"] == "run_finished")
        with (
            stand_in_worker(study_runs / source.name) as worker,  # a live worker owns the run
            EventWriter(study_runs / source.name / "events.jsonl") as writer,
        ):
            replay(writer, events[:finish], pid=worker.pid)
            await wait_until(pilot, lambda: view.snapshot.counts["running"] == 1, 15, "shown running")
            assert "1 running" in screen_text(pilot.app)
            replay(writer, events[finish:])
        await wait_until(pilot, lambda: view.snapshot.counts["done"] == 22, 15, "shown done")
        cell = view.query_one("#study-table").get_cell("rte", "dtvg").plain
        assert "1/2" in cell and "—" not in cell
        assert summarize(study_runs / source.name).status == "completed"


TINY = """\
name = "stop-me"
model = "tiny-llama"
prompt_length = 4
data_dir = "{data}"
sources = ["mnli"]
targets = ["rte"]
methods = ["pt"]
[stage1]
steps = 100000
eval_every = 100000
k_shot = 8
max_eval = 8
[stage2]
steps = 2
k_shot = 8
max_eval = 8
"""


@sync
async def test_start_stop_and_resume_a_real_study(runs_dir: Path, data_dir: Path, tmp_path: Path):
    """g starts the study's pipeline; s (confirmed) ends it and stops its running run, which then shows
    stopped; g again resumes that run. The stage-1 run is so long that it is always running when stopped."""
    file = tmp_path / "stop-me.toml"
    file.write_text(TINY.format(data=data_dir))
    app = DtvgApp(runs_dir, refresh_interval=0.3, follow_interval=0.2, study=file)
    pipelines: list[int | None] = []
    try:
        async with app.run_test(size=SIZE) as pilot:
            await settle_study(pilot)
            view = pilot.app.screen
            assert "0/2 done" in screen_text(pilot.app) and "pipeline not running" in screen_text(pilot.app)
            await pilot.press("g")
            pipelines.append(studyprocess.pipeline_pid(runs_dir, "stop-me"))
            await wait_until(pilot, lambda: view.snapshot.counts["running"] == 1, 120, "running")
            assert "pipeline running" in screen_text(pilot.app)
            run = next(s.run_id for s in view.snapshot.slots if s.state == "running")
            await pilot.press("s")
            await pilot.pause(0.3)
            await pilot.press("y")
            await wait_until(pilot, lambda: view.snapshot.counts["stopped"] == 1, 60, "stopped")
            assert studyprocess.pipeline_pid(runs_dir, "stop-me") is None
            assert summarize(runs_dir / run).status == "stopped"
            await wait_until(
                pilot, lambda: "pipeline not running" in screen_text(pilot.app), 10, "shown ended"
            )

            await pilot.press("g")  # resume: the same run goes on
            pipelines.append(studyprocess.pipeline_pid(runs_dir, "stop-me"))
            resumed = lambda: summarize(runs_dir / run).status == "running"  # noqa: E731
            await wait_until(pilot, resumed, 300, "resumed")  # a new pipeline and worker: slow under load
            assert [s.run_id for s in view.snapshot.slots if s.stage == "stage1"] == [run]
            await pilot.press("s")
            await pilot.pause(0.3)
            await pilot.press("y")
            await wait_until(
                pilot, lambda: summarize(runs_dir / run).status == "stopped", 60, "stopped again"
            )
    finally:  # leave nothing running when the test fails
        for pid in pipelines:
            kill_group(pid)
        for pidfile in runs_dir.glob("*/worker.pid"):
            kill_group(int(pidfile.read_text()))
