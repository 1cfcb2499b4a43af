"""The dashboard's generation tasks: the samples panel of a run's detail view (predictions.jsonl read
safely, refreshed at each evaluation while the run trains), the New-run form's task choices, and the
study view of a generation target."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from live_worker import owning
from textual.widgets import Select, SelectionList

from dtvg_engine.runs.events import EventWriter
from dtvg_engine.runs.runfolder import CONFIG, PREDICTIONS
from dtvg_engine.studies import studyresults
from dtvg_engine.train.tasks import GENERATION_METRICS
from dtvg_tui.app import DtvgApp
from dtvg_tui.screens.new_run import NewRunScreen
from dtvg_tui.widgets.curves import CurvesPlot
from dtvg_tui.widgets.samples import SAMPLES_BYTES, SamplesPanel, read_samples

from .conftest import settle
from .helpers import clone_run, replay, screen_text, split_at_step, sync, wait_until
from .study_helpers import settle_study

SIZE = (150, 40)


def write_predictions(run_dir: Path, step: int, word: str, rows: int = 4) -> None:
    lines = [
        {
            "split": "validation",
            "step": step,
            "input": f"Concepts: dog, ball {i} Sentence:",
            "prediction": f"{word} dog {i}",
            "references": [f"A dog plays with ball {i}.", "The dog runs.", "Dogs love balls."],
        }
        for i in range(rows)
    ]
    (run_dir / PREDICTIONS).write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_read_samples_takes_the_first_records_and_skips_what_is_not_one(tmp_path: Path) -> None:
    assert read_samples(tmp_path) == []  # no file yet
    good = {"input": "in", "prediction": "out", "references": ["ref"]}
    lines = [good, {"input": "in", "prediction": 3, "references": []}, [1], {**good, "references": [2]}]
    text = "".join(json.dumps(line) + "\n" for line in lines) + "not json\n" + json.dumps(good) + "\n"
    (tmp_path / PREDICTIONS).write_text(text)
    assert read_samples(tmp_path) == [good, good]
    assert read_samples(tmp_path, count=1) == [good]


def test_read_samples_reads_a_bounded_part_and_never_a_link(tmp_path: Path) -> None:
    record = json.dumps({"input": "x" * 1000, "prediction": "p", "references": ["r"]}) + "\n"
    many = (SAMPLES_BYTES // len(record)) + 10
    (tmp_path / PREDICTIONS).write_text(record * many)
    assert len(read_samples(tmp_path, count=many)) == SAMPLES_BYTES // len(record)  # whole lines only
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / PREDICTIONS).symlink_to(tmp_path / PREDICTIONS)
    assert read_samples(linked) == []
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / PREDICTIONS)
    assert read_samples(fifo) == []  # refused, not waited on


@sync
async def test_detail_shows_a_generation_runs_samples_and_metric_curves(recorded_runs: Path):
    live = "20261125-180000-stage1-common_gen"
    run_dir, events = clone_run(recorded_runs, "stage1-rte", live)
    for event in events:  # the recorded run's evaluations, as a generation run reports them
        if event["type"] == "eval":
            event["metrics"] = {name: event["step"] / 100 for name in GENERATION_METRICS}
            event["primary"] = event["step"] / 100
    config = json.loads((run_dir / CONFIG).read_text())
    (run_dir / CONFIG).write_text(json.dumps({**config, "task": "common_gen"}))
    cut = split_at_step(events, 4)  # the first validation
    write_predictions(run_dir, 4, "first")
    with owning(run_dir), EventWriter(run_dir / "events.jsonl") as writer:
        replay(writer, events[:cut], pid=os.getpid())  # this process plays the worker: alive
        app = DtvgApp(recorded_runs, refresh_interval=0.2, follow_interval=0.1)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            app.open_detail(run_dir)
            await settle(pilot)
            panel = app.screen.query_one("#detail-samples", SamplesPanel)
            text = screen_text(app)
            assert "→ first dog 0" in text and "ref A dog plays with ball 0." in text
            assert "(+1 more references)" in text and "validation @4" in panel.border_title
            assert "first dog 3" not in text  # a few rows, not all
            write_predictions(run_dir, 8, "second")
            replay(writer, events[cut : split_at_step(events, 8)])  # the next evaluation
            await wait_until(pilot, lambda: "→ second dog 0" in screen_text(app), 10, "refreshed")
            assert "validation @8" in panel.border_title
            plot = app.screen.query_one("#detail-eval", CurvesPlot)

            def plotted() -> set[str]:  # the curves the plot was last drawn with: (label, points, ...)
                return {label for label, points, *_ in plot._key[0] if points} if plot._key else set()

            await wait_until(pilot, lambda: len(plotted()) == 5, 5, "every metric plotted")
            assert plotted() == {"validation", *GENERATION_METRICS}


@sync
async def test_a_classification_run_has_no_samples_panel(recorded_runs: Path):
    rte = next(p for p in recorded_runs.iterdir() if p.name.endswith("stage1-rte"))
    app = DtvgApp(recorded_runs, refresh_interval=0.2, follow_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.open_detail(rte)
        await settle(pilot)
        assert not app.screen.query("#detail-samples")
        plot = app.screen.query_one("#detail-eval", CurvesPlot)
        assert [label for label, *_ in plot._key[0]] == ["validation", "test"]  # no curve per metric


@sync
async def test_the_new_run_form_offers_the_generation_tasks(recorded_runs: Path):
    app = DtvgApp(recorded_runs, refresh_interval=0.2, follow_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("n")
        await settle(pilot)
        assert isinstance(app.screen, NewRunScreen)
        stage1 = app.screen.query_one("#s1-tasks", SelectionList)
        offered = {stage1.get_option_at_index(i).value for i in range(stage1.option_count)}
        targets = {value for _, value in app.screen.query_one("#s2-target", Select)._options}
        for task in ("web_nlg", "common_gen", "e2e_nlg_cleaned", "e2e_nlg"):
            assert task in offered and task in targets


NLG_STUDY = """
name = "tiny-nlg-view"
model = "tiny-llama"
prompt_length = 4
sources = ["rte"]
targets = ["common_gen"]
methods = ["pt", "dtvg"]
seeds = [0]
[stage1]
steps = 2
max_eval = 3
eval_every = 2
k_shot = 8
[stage2]
steps = 2
max_eval = 3
eval_every = 2
k_shot = 8
max_target_tokens = 6
"""


@sync
async def test_the_study_view_shows_a_generation_targets_scores(tmp_path: Path, data_dir: Path):
    """A real tiny study with a generation target: its table and chart show the mean of BLEU and ROUGE,
    with no constant-prediction floor."""
    experiment, runs = tmp_path / "nlg.toml", tmp_path / "runs"
    experiment.write_text(NLG_STUDY)
    dtvg = str(Path(sys.executable).with_name("dtvg"))
    result = subprocess.run(
        [dtvg, "run", "pipeline", experiment, "--runs-dir", runs, "--data-dir", data_dir],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((runs / "tiny-nlg-view-results.json").read_text())["rows"]
    app = DtvgApp(runs, refresh_interval=0.3, follow_interval=0.1, study=experiment)
    async with app.run_test(size=SIZE) as pilot:
        await settle_study(pilot)
        text = screen_text(app)
        assert "common_gen (mean(bleu,rouge1,rouge2,rougeL))" in text
        table = app.screen.query_one("#study-table")
        for row in rows:
            shown = table.get_cell("common_gen", row["method"]).plain
            assert f"{studyresults.pct(row['mean'])} ± {studyresults.pct(row['std'])}" in shown
        assert str(table.get_cell("common_gen", "constant")) == "—"
