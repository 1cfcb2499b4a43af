"""Pilot tests: every screen and binding of the dashboard, on fixed synthetic runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dtvg_engine import launcher
from dtvg_engine.runfolder import EVENTS, read_meta
from dtvg_tui.app import DtvgApp
from dtvg_tui.screens.compare import CompareScreen
from dtvg_tui.screens.detail import RunDetailScreen
from dtvg_tui.screens.dialogs import ConfirmScreen, PromptScreen
from dtvg_tui.screens.help import HelpScreen
from dtvg_tui.screens.inspector import InspectorScreen
from dtvg_tui.screens.new_run import NewRunScreen
from dtvg_tui.screens.runs import RunsScreen
from dtvg_tui.synthetic import stage1_config, training_events, write_run

from .conftest import settle
from .helpers import screen_text, sync

SIZE = (150, 40)
STAGE2 = "20250615-150400-stage2-rte-dtvg"
FAILED = "20250615-150300-stage1-rte"


def app_for(runs: Path, **kwargs) -> DtvgApp:
    return DtvgApp(runs, refresh_interval=0.2, follow_interval=0.1, **kwargs)


@sync
async def test_runs_table_filter_sort_select(demo_runs: Path):
    app = app_for(demo_runs)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        runs = app.screen
        assert isinstance(runs, RunsScreen)
        assert runs.shown[0] == STAGE2 and len(runs.shown) == 5
        await pilot.press("slash", *"qnli", "enter")
        assert runs.shown == ["20250615-150001-stage1-qnli"]
        await pilot.press("escape")
        assert len(runs.shown) == 5
        await pilot.press("x", "x", "x", "x")  # any → pending → running → completed → failed
        assert runs.status_filter == "failed" and runs.shown == [FAILED]
        text = screen_text(app)
        assert "RuntimeError: loss is NaN at step 25" in text and "worker.log" in text
        await pilot.press("escape")
        await pilot.press("greater_than_sign")  # sort by stage
        assert runs.sort_column == "stage" and runs.shown[0] == STAGE2
        await pilot.press("minus")
        assert runs.shown[-1] == STAGE2
        await pilot.press("less_than_sign")
        assert runs.sort_column == "run_id"
        await pilot.press("space", "space")
        assert len(runs.selected) == 2 and "2 selected" in runs.sub_title
        await pilot.click("#runs-table", offset=(30, 0))  # the "Stage" header? any header sorts
        assert runs.sort_column in {c for c in __import__("dtvg_tui.runtable").runtable.COLUMN_KEYS}


@sync
async def test_tag_and_note(demo_runs: Path):
    app = app_for(demo_runs)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("t")
        assert isinstance(app.screen, PromptScreen)
        await pilot.press(*"paper, best", "enter")
        await pilot.press("o")
        await pilot.press(*"the good one", "enter")
        await settle(pilot)
        await pilot.pause(0.5)
        assert read_meta(demo_runs / STAGE2) == {"tags": ["paper", "best"], "note": "the good one"}
        runs = app.screen
        assert runs.summaries[STAGE2].tags == ["paper", "best"]
        assert "paper,best" in screen_text(app) and "note: the good one" in screen_text(app)
        await pilot.press("o", "escape")  # cancel leaves the note alone
        assert read_meta(demo_runs / STAGE2)["note"] == "the good one"
        history = json.loads((demo_runs / "history.json").read_text())
        assert any(doc.get("tags") == ["paper", "best"] for doc in history["runs"].values())


@sync
async def test_detail_follow_and_steps(demo_runs: Path):
    app = app_for(demo_runs)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)
        detail = app.screen
        assert isinstance(detail, RunDetailScreen)
        text = screen_text(app)
        assert "step 60/60" in text and "Group at step 60" in text and "FOLLOW" in text
        await pilot.press("left", "left", "pageup")
        assert not detail.follow and detail.current_index() == 47
        assert "Group at step 48" in screen_text(app) and "PAUSED" in screen_text(app)
        await pilot.press("right")
        assert detail.current_index() == 48
        await pilot.press("f")
        assert detail.follow and detail.current_index() == 59
        await pilot.press("f")
        assert not detail.follow
        await pilot.press("i")
        assert isinstance(app.screen, InspectorScreen)
        await pilot.press("escape", "escape")
        assert isinstance(app.screen, RunsScreen)


@sync
async def test_detail_follows_a_live_run(demo_runs: Path):
    config = stage1_config("cola", steps=40)
    events = training_events("20250615-170000-stage1-cola", config, 40, pid=os.getpid())
    run_dir = write_run(demo_runs, "20250615-170000-stage1-cola", config, events[:10])
    app = app_for(demo_runs)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.screen.summaries[run_dir.name].status == "running"
        await pilot.press("enter")
        await settle(pilot)
        detail = app.screen
        assert detail.series.step == 9
        with open(run_dir / EVENTS, "a") as f:
            for event in events[10:]:
                f.write(json.dumps({"v": 1, **event}) + "\n")
        for _ in range(50):
            await pilot.pause(0.1)
            if detail.series.status == "completed":
                break
        assert detail.series.step == 40 and detail.series.status == "completed"
        await pilot.press("escape")
        await settle(pilot)
        await pilot.pause(0.3)
        assert app.screen.summaries[run_dir.name].status == "completed"


@sync
async def test_runs_started_elsewhere_appear(demo_runs: Path):
    app = app_for(demo_runs)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        config = stage1_config("boolq")
        write_run(
            demo_runs,
            "20250615-180000-stage1-boolq",
            config,
            training_events("20250615-180000-stage1-boolq", config, 5),
        )
        for _ in range(30):
            await pilot.pause(0.1)
            if "20250615-180000-stage1-boolq" in app.screen.shown:
                break
        assert app.screen.shown[0] == "20250615-180000-stage1-boolq"


@sync
async def test_inspector_keys_and_heatmap(demo_runs: Path):
    app = app_for(demo_runs)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("i")
        await settle(pilot)
        inspector = app.screen
        assert isinstance(inspector, InspectorScreen)
        changes = inspector.series.group.changes
        await pilot.press("home")
        assert inspector.current_index() == 0
        await pilot.press("right_square_bracket")
        assert inspector.current_index() == changes[1]
        await pilot.press("left_square_bracket")
        assert inspector.current_index() == 0
        await pilot.press("right", "right", "pagedown")
        assert inspector.current_index() == 12
        await pilot.press("left")
        assert inspector.current_index() == 11
        await pilot.press("end")
        assert inspector.current_index() == 59
        await pilot.pause(0.3)
        text = screen_text(app)
        assert "Task similarity" in text and "mnli +" in text
        await pilot.press("h")
        assert not inspector.query_one("#inspector-heatmap").display
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)


@sync
async def test_inspector_refuses_stage1(demo_runs: Path):
    app = app_for(demo_runs)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("down", "i")
        assert isinstance(app.screen, RunsScreen)


@sync
async def test_compare(demo_runs: Path):
    app = app_for(demo_runs)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("c")
        assert isinstance(app.screen, RunsScreen)  # fewer than two selected
        await pilot.press("space", "down", "down", "space", "c")
        compare = app.screen
        assert isinstance(compare, CompareScreen) and len(compare.run_dirs) == 2
        await pilot.pause(0.5)
        assert len(compare.series) == 2
        config_rows = compare.query_one("#compare-config").row_count
        await pilot.press("d")
        assert not compare.only_differences and compare.query_one("#compare-config").row_count > config_rows
        assert compare.query_one("#compare-metrics").row_count == 2
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)


@sync
async def test_help_palette_and_quit(demo_runs: Path):
    app = app_for(demo_runs)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert "dtvg.runs.stop" in screen_text(app)
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)
        await pilot.press("ctrl+p")
        await pilot.pause(0.2)
        from textual.command import CommandPalette

        assert isinstance(app.screen, CommandPalette)
        await pilot.press(*"compare sel")
        await pilot.pause(0.3)
        await pilot.press("escape")
        await pilot.pause(0.1)
        await pilot.press("q")
    assert app.return_code == 0


@sync
async def test_user_keymap_rebinds(demo_runs: Path):
    app = app_for(demo_runs, keymap={"dtvg.app.new_run": "N", "dtvg.runs.detail": "ctrl+o"})
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("n")
        assert isinstance(app.screen, RunsScreen)
        await pilot.press("N")
        assert isinstance(app.screen, NewRunScreen)
        await pilot.press("escape", "ctrl+o")
        assert isinstance(app.screen, RunDetailScreen)


@sync
async def test_new_run_stage1_validates_and_launches(demo_runs: Path, monkeypatch: pytest.MonkeyPatch):
    launched: list[Path] = []
    monkeypatch.setattr(
        launcher, "launch_worker", lambda run_dir, command=None: launched.append(run_dir) or 4242
    )
    app = app_for(demo_runs)
    async with app.run_test(size=(120, 60)) as pilot:
        await settle(pilot)
        await pilot.press("n")
        form = app.screen
        assert isinstance(form, NewRunScreen)
        await pilot.press("ctrl+l")
        assert "pick at least one task" in str(form.query_one("#new-run-error").render())
        form.query_one("#s1-tasks").select("rte")
        form.query_one("#s1-steps").value = "0"
        await pilot.pause()
        assert "steps" in str(form.query_one("#new-run-error").render())
        form.query_one("#s1-steps").value = "5"
        form.query_one("#s1-model").value = "tiny-llama"
        await pilot.pause()
        assert str(form.query_one("#new-run-error").render()).strip() == ""
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen)
        assert len(launched) == 1 and launched[0].name.endswith("-stage1-rte")
        config = json.loads((launched[0] / "config.json").read_text())
        assert config["steps"] == 5 and config["model"] == "tiny-llama" and config["task"] == "rte"


@sync
async def test_new_run_stage2_form(demo_runs: Path, monkeypatch: pytest.MonkeyPatch):
    launched: list[Path] = []
    monkeypatch.setattr(
        launcher, "launch_worker", lambda run_dir, command=None: launched.append(run_dir) or 4242
    )
    app = app_for(demo_runs)
    async with app.run_test(size=(120, 60)) as pilot:
        await settle(pilot)
        await pilot.press("n")
        form = app.screen
        form.query_one("#new-run-tabs").active = "tab-stage2"
        form.query_one("#s2-target").focus()
        await pilot.pause()
        assert form.query_one("#s2-init").value == ("tiny-llama", 8, 0)  # the only init with finished runs
        form.query_one("#s2-target").value = "rte"
        await pilot.pause()
        sources = form.query_one("#s2-sources")
        assert sorted(o.value for o in sources.options) == ["mnli", "qnli", "sst2"]
        sources.select("qnli")
        await pilot.press("ctrl+l")  # dtvg needs the target's own stage-1 vector: rte's run failed
        assert not launched and "no finished stage-1 run of 'rte'" in str(
            form.query_one("#new-run-error").render()
        )
        form.query_one("#s2-target").value = "mnli"
        await pilot.pause()
        assert sorted(o.value for o in sources.options) == ["qnli", "sst2"]
        sources.select("sst2")
        await pilot.pause()
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert len(launched) == 1, form.query_one("#new-run-error").render()
        config = json.loads((launched[0] / "config.json").read_text())
        assert config["stage"] == "stage2" and config["sources"] == ["qnli", "sst2"]
        assert set(config["stage1_runs"]) == {"mnli", "qnli", "sst2"}


@sync
async def test_stop_kill_resume_confirmations(demo_runs: Path, monkeypatch: pytest.MonkeyPatch):
    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(launcher, "stop_run", lambda d: calls.append(("stop", Path(d).name)) or True)
    monkeypatch.setattr(launcher, "kill_run", lambda d: calls.append(("kill", Path(d).name)) or True)
    monkeypatch.setattr(
        launcher, "launch_worker", lambda d, command=None: calls.append(("resume", Path(d).name)) or 1
    )
    config = stage1_config("cola")
    live = "20250615-190000-stage1-cola"
    write_run(demo_runs, live, config, training_events(live, config, 10, status=None, pid=os.getpid()))
    stopped = "20250615-100000-stage1-wnli"
    write_run(
        demo_runs, stopped, stage1_config("wnli"), training_events(stopped, config, 10, status="stopped")
    )
    app = app_for(demo_runs)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        runs = app.screen
        assert runs.current_id == live
        await pilot.press("s")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        await pilot.press("k")
        await pilot.press("y")
        await pilot.press("s", "y")
        assert calls == [("kill", live), ("stop", live)]
        await pilot.press("u")  # a running run does not resume
        assert len(calls) == 2
        runs.query_one("#runs-table").move_cursor(row=runs.shown.index(stopped))
        await pilot.press("u")
        assert calls[-1] == ("resume", stopped)
        await pilot.press("s")  # a stopped run cannot be stopped
        assert not isinstance(app.screen, ConfirmScreen)
