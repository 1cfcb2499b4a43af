"""Pilot tests: every screen and binding of the dashboard, on the runs recorded with the real engine.

The recordings (tests/fixtures/runs, copied per test): stage 1 on mnli, qnli, rte and sst2 (12 steps),
stage 2 on rte with `dtvg` (16 steps, a group event each) and `pt`, and a stage-1 cb run that failed
("loss became nan at step 3"). Live, killed and stopped runs are made from them (see helpers.py);
the New run forms and stop / kill / resume drive real tiny workers (`python -m dtvg_engine.worker`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from live_worker import owning
from textual.screen import Screen
from textual.widgets import Select

from dtvg_engine import config as configs
from dtvg_engine.config import stage1_config
from dtvg_engine.runs import launcher
from dtvg_engine.runs.events import EventWriter
from dtvg_engine.runs.runfolder import create_run
from dtvg_engine.runs.runmeta import read_meta
from dtvg_tui import runtable
from dtvg_tui.app import DtvgApp
from dtvg_tui.runtable import COLUMN_KEYS
from dtvg_tui.screens.compare import CompareScreen
from dtvg_tui.screens.detail import RunDetailScreen
from dtvg_tui.screens.dialogs import ConfirmScreen, PromptScreen
from dtvg_tui.screens.help import HelpScreen
from dtvg_tui.screens.inspector import InspectorScreen
from dtvg_tui.screens.new_run import NewRunScreen
from dtvg_tui.screens.runs import RunsScreen

from .conftest import settle
from .helpers import (
    clone_run,
    group_members,
    kill_group,
    recorded_events,
    replay,
    run_id,
    screen_text,
    split_at_step,
    sync,
    wait_until,
    worker_log,
    write_events,
)

SIZE = (150, 40)


def app_for(runs: Path, **kwargs) -> DtvgApp:
    return DtvgApp(runs, refresh_interval=0.2, follow_interval=0.1, **kwargs)


def move_to(app: DtvgApp, run: str) -> None:
    runs = app.screen
    assert isinstance(runs, RunsScreen)
    runs.query_one("#runs-table").move_cursor(row=runs.shown.index(run))


async def open_recorded(pilot, runs: Path, suffix: str, key: str) -> Screen:
    """Put the Runs screen's cursor on the recorded run `suffix`, press `key`; the screen it leads to."""
    await settle(pilot)
    move_to(pilot.app, run_id(runs, suffix))
    await pilot.press(key)
    await settle(pilot)
    return pilot.app.screen


@sync
async def test_runs_table_filter_sort_select(recorded_runs: Path):
    failed, dtvg = run_id(recorded_runs, "stage1-cb"), run_id(recorded_runs, "stage2-rte-dtvg")
    app = app_for(recorded_runs)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        runs = app.screen
        assert isinstance(runs, RunsScreen)
        assert runs.shown[0] == failed and len(runs.shown) == 7  # newest first
        await pilot.press("slash", *"qnli", "enter")
        assert runs.shown == [run_id(recorded_runs, "stage1-qnli")]
        await pilot.press("escape")
        assert len(runs.shown) == 7
        await pilot.press("x", "x", "x", "x", "x")  # any → pending → running → suspended → completed → failed
        assert runs.status_filter == "failed" and runs.shown == [failed]
        text = screen_text(app)
        assert "loss became nan at step 3" in text and "worker.log" in text
        await pilot.press("escape")
        await pilot.press("greater_than_sign")  # sort by stage (descending)
        assert runs.sort_column == "stage" and runs.summaries[runs.shown[0]].stage == "stage2"
        await pilot.press("minus")
        assert runs.summaries[runs.shown[-1]].stage == "stage2" and dtvg in runs.shown[-2:]
        await pilot.press("less_than_sign")
        assert runs.sort_column == "run_id"
        move_to(app, runs.shown[0])
        await pilot.press("space", "space")  # select, move down, select
        assert len(runs.selected) == 2 and "2 selected" in runs.sub_title
        await pilot.click("#runs-table", offset=(30, 0))  # a header: any header sorts
        assert runs.sort_column in COLUMN_KEYS


@sync
async def test_runs_table_holds_at_most_its_row_limit_and_says_so(recorded_runs: Path, monkeypatch):
    """5,000 runs took seconds to a first screen (issue 24): the table holds the first ROW_LIMIT of the
    order, sorting and filtering still see every run, and the title says how many are left out."""
    monkeypatch.setattr(runtable, "ROW_LIMIT", 3)
    app = app_for(recorded_runs)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        runs = app.screen
        assert isinstance(runs, RunsScreen)
        assert len(runs.shown) == 3 and runs.query_one("#runs-table").row_count == 3
        assert "first 3 of 7 (7 runs; / to filter)" in runs.sub_title
        assert runs.shown == sorted(runs.summaries, reverse=True)[:3]  # the newest, as sorted over all
        await pilot.press("slash", *"qnli", "enter")  # a filter reaches a run beyond the first rows
        assert runs.shown == [run_id(recorded_runs, "stage1-qnli")] and "first" not in runs.sub_title


@sync
async def test_tag_and_note(recorded_runs: Path):
    dtvg = run_id(recorded_runs, "stage2-rte-dtvg")
    app = app_for(recorded_runs)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        move_to(app, dtvg)
        await pilot.press("t")
        assert isinstance(app.screen, PromptScreen)
        await pilot.press(*"paper, best", "enter")
        await pilot.press("o")
        await pilot.press(*"the good one", "enter")
        await settle(pilot)
        await pilot.pause(0.5)
        assert read_meta(recorded_runs / dtvg) == {"tags": ["paper", "best"], "note": "the good one"}
        runs = app.screen
        assert runs.summaries[dtvg].tags == ["paper", "best"]
        assert "paper,best" in screen_text(app) and "note: the good one" in screen_text(app)
        await pilot.press("o", "escape")  # cancel leaves the note alone
        assert read_meta(recorded_runs / dtvg)["note"] == "the good one"
        history = json.loads((recorded_runs / "history.json").read_text())
        assert any(doc.get("tags") == ["paper", "best"] for doc in history["runs"].values())


@sync
async def test_detail_follow_and_steps(recorded_runs: Path):
    app = app_for(recorded_runs)
    async with app.run_test(size=SIZE) as pilot:
        detail = await open_recorded(pilot, recorded_runs, "stage2-rte-dtvg", "enter")
        assert isinstance(detail, RunDetailScreen)
        text = screen_text(app)
        assert "step 16/16" in text and "Group at step 16" in text and "FOLLOW" in text
        await pilot.press("left", "left")
        assert not detail.follow and detail.current_index() == 13
        await pilot.press("pageup")
        assert detail.current_index() == 3
        assert "Group at step 4" in screen_text(app) and "PAUSED" in screen_text(app)
        await pilot.press("right")
        assert detail.current_index() == 4
        await pilot.press("f")
        assert detail.follow and detail.current_index() == 15
        await pilot.press("f")
        assert not detail.follow
        await pilot.press("i")
        assert isinstance(app.screen, InspectorScreen)
        await pilot.press("escape", "escape")
        assert isinstance(app.screen, RunsScreen)


@sync
async def test_detail_follows_a_live_run(recorded_runs: Path):
    """A recorded stage-2 run replayed through a real EventWriter while the detail screen follows it."""
    live = "20261125-180000-stage2-rte-dtvg"
    run_dir, events = clone_run(recorded_runs, "stage2-rte-dtvg", live)
    cut = split_at_step(events, 6)
    with owning(run_dir), EventWriter(run_dir / "events.jsonl") as writer:
        replay(writer, events[:cut], pid=os.getpid())  # this process plays the worker: alive
        app = app_for(recorded_runs)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert app.screen.summaries[live].status == "running"
            move_to(app, live)
            await pilot.press("enter")
            await settle(pilot)
            detail = app.screen
            assert detail.series.step == 6 and detail.series.status == "running"
            assert "step 6/16" in screen_text(app)
            for start in range(cut, len(events), 6):  # the rest arrives in bursts, as training goes on
                replay(writer, events[start : start + 6])
                await pilot.pause(0.15)
            for _ in range(50):
                await pilot.pause(0.1)
                if detail.series.status == "completed":
                    break
            assert detail.series.step == 16 and detail.series.status == "completed"
            assert len(detail.series.group) == 16
            await pilot.press("escape")
            await settle(pilot)
            await pilot.pause(0.3)
            assert app.screen.summaries[live].status == "completed"


@sync
async def test_runs_started_elsewhere_appear(recorded_runs: Path):
    app = app_for(recorded_runs)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        new = "20261125-180000-stage1-mnli"
        run_dir, events = clone_run(recorded_runs, "stage1-mnli", new)
        write_events(run_dir, events)
        for _ in range(30):
            await pilot.pause(0.1)
            if new in app.screen.shown:
                break
        assert app.screen.shown[0] == new and app.screen.summaries[new].status == "completed"


@sync
async def test_inspector_keys_and_heatmap(recorded_runs: Path):
    app = app_for(recorded_runs)
    async with app.run_test(size=SIZE) as pilot:
        inspector = await open_recorded(pilot, recorded_runs, "stage2-rte-dtvg", "i")
        assert isinstance(inspector, InspectorScreen)
        changes = inspector.series.group.changes
        assert list(changes) == [0, 2, 3, 4, 6]  # the recorded groups change at steps 3, 4, 5 and 7
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
        assert inspector.current_index() == 15
        await pilot.pause(0.3)
        text = screen_text(app)
        assert "Task similarity" in text and re.search(r"sst2 +[+-][0-9]", text)
        await pilot.press("h")
        assert not inspector.query_one("#inspector-heatmap").display
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)


@sync
async def test_inspector_refuses_stage1(recorded_runs: Path):
    app = app_for(recorded_runs)
    async with app.run_test(size=SIZE) as pilot:
        assert isinstance(await open_recorded(pilot, recorded_runs, "stage1-rte", "i"), RunsScreen)


@sync
async def test_compare(recorded_runs: Path):
    pt, dtvg = run_id(recorded_runs, "stage2-rte-pt"), run_id(recorded_runs, "stage2-rte-dtvg")
    app = app_for(recorded_runs)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        move_to(app, pt)
        await pilot.press("c")
        assert isinstance(app.screen, RunsScreen)  # fewer than two selected
        await pilot.press("space", "space", "c")  # select pt (the cursor moves on), then dtvg
        compare = app.screen
        assert isinstance(compare, CompareScreen) and len(compare.run_dirs) == 2
        await pilot.pause(0.5)
        assert len(compare.series) == 2
        config_rows = compare.query_one("#compare-config").row_count
        assert {Path(d).name for d in compare.run_dirs} == {pt, dtvg}
        assert "stage2-rte-dtvg" in screen_text(app) and "source_scale_lr" not in screen_text(app)
        await pilot.press("d")
        assert not compare.only_differences and compare.query_one("#compare-config").row_count > config_rows
        assert compare.query_one("#compare-metrics").row_count == 2
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)


@sync
async def test_help_palette_and_quit(recorded_runs: Path):
    app = app_for(recorded_runs)
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
async def test_user_keymap_rebinds(recorded_runs: Path):
    app = app_for(recorded_runs, keymap={"dtvg.app.new_run": "N", "dtvg.runs.detail": "ctrl+o"})
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("n")
        assert isinstance(app.screen, RunsScreen)
        await pilot.press("N")
        assert isinstance(app.screen, NewRunScreen)
        await pilot.press("escape", "ctrl+o")
        assert isinstance(app.screen, RunDetailScreen)


WORKER_TIMEOUT = 60.0
"""Seconds a real tiny worker may take to load torch, train a few steps and finish (about 10 s idle)."""


def new_runs(runs: Path, before: set[str]) -> list[Path]:
    """The run folders created in `runs` since `before` (its folder names then)."""
    return sorted(
        p for p in runs.iterdir() if p.is_dir() and p.name not in before and not p.name.startswith("_")
    )


async def wait_for_status(pilot, run: str, statuses: tuple[str, ...], run_dir: Path) -> str:  # noqa: ANN001
    """Wait until the Runs screen shows `run` in one of `statuses` (failing at once when it failed)."""
    runs = pilot.app.runs_screen

    def status() -> str | None:
        summary = runs.summaries.get(run)
        current = summary.status if summary else None
        if current == "failed" and "failed" not in statuses:
            raise AssertionError(f"{run} failed:\n{worker_log(run_dir)}")
        return current if current in statuses else None

    try:
        return await wait_until(pilot, status, WORKER_TIMEOUT, f"{run} {'/'.join(statuses)}")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{worker_log(run_dir)}") from None


async def open_new_run(pilot, tab: str) -> NewRunScreen:
    """Open the New run form from the loaded Runs screen, on `tab` ("tab-stage1", "tab-stage2", ...)."""
    await settle(pilot)
    await pilot.press("n")
    form = pilot.app.screen
    assert isinstance(form, NewRunScreen)
    form.query_one("#new-run-tabs").active = tab
    return form


NOT_SETTINGS = {"s1-tasks", "s2-init", "s2-target", "s2-sources", "pl-file"}
"""The New-run form's fields that are no run setting: what to run, and from which vectors."""


@sync
async def test_new_run_form_fields_are_settings_with_their_defaults(runs_dir: Path, monkeypatch):
    """Every field of the form is a setting of `config`, opening on that setting's default (the model's
    where the model sets one): the form spells no setting or default of its own."""
    monkeypatch.delenv("DTVG_DATA_DIR", raising=False)
    defaults = {**configs.defaults_for(configs.TRAINING_DEFAULTS["model"]), **configs.STAGE2_DEFAULTS}
    app = app_for(runs_dir)
    async with app.run_test(size=(120, 60)) as pilot:
        form = await open_new_run(pilot, "tab-stage1")
        fields = [w for w in form.query("Input, Select, SelectionList") if w.id and w.id not in NOT_SETTINGS]
        assert len(fields) > 20
        for widget in fields:
            key = widget.id.split("-", 1)[1]
            assert key in configs.SETTINGS_BY_KEY, widget.id
            shown = "" if defaults[key] is None else str(defaults[key])
            assert widget.value == (defaults[key] if isinstance(widget, Select) else shown), widget.id


@sync
async def test_new_run_stage1_validates_and_launches(runs_dir: Path, data_dir: Path):
    """The Stage 1 tab refuses an incomplete form, then launches a real tiny worker that completes."""
    app = app_for(runs_dir)
    pgids: list[int] = []
    try:
        async with app.run_test(size=(120, 60)) as pilot:
            form = await open_new_run(pilot, "tab-stage1")
            await pilot.press("ctrl+l")
            assert "pick at least one task" in str(form.query_one("#new-run-error").render())
            form.query_one("#s1-tasks").select("mnli")
            form.query_one("#s1-steps").value = "0"
            await pilot.pause()
            assert "steps" in str(form.query_one("#new-run-error").render())
            for field, value in {
                "model": "tiny-llama",
                "prompt_length": "4",
                "steps": "3",
                "k_shot": "16",
                "max_eval": "16",
                "data_dir": str(data_dir),
            }.items():
                form.query_one(f"#s1-{field}").value = value
            await pilot.pause()
            assert str(form.query_one("#new-run-error").render()).strip() == ""
            await pilot.press("ctrl+l")
            await pilot.pause()
            assert isinstance(app.screen, RunsScreen), str(form.query_one("#new-run-error").render())
            (run_dir,) = new_runs(runs_dir, set())
            pgids.append(int((run_dir / "worker.pid").read_text()))
            assert run_dir.name.endswith("-stage1-mnli")
            config = json.loads((run_dir / "config.json").read_text())
            assert (config["steps"], config["model"], config["task"]) == (3, "tiny-llama", "mnli")
            assert (config["prompt_length"], config["k_shot"], config["max_eval"]) == (4, 16, 16)
            assert config["data_dir"] == str(data_dir.resolve())
            await wait_for_status(pilot, run_dir.name, ("completed",), run_dir)
            assert (run_dir / "tpv.safetensors").is_file()
            await pilot.pause(0.5)
            assert "completed" in screen_text(app) and "3/3" in screen_text(app)
    finally:
        for pgid in pgids:
            kill_group(pgid)


@sync
async def test_new_run_stage2_form(recorded_runs: Path, data_dir: Path):
    """The Stage 2 tab offers the recorded stage-1 runs and launches a real dtvg worker on them."""
    before = {p.name for p in recorded_runs.iterdir()}
    app = app_for(recorded_runs)
    pgids: list[int] = []
    try:
        async with app.run_test(size=(120, 60)) as pilot:
            form = await open_new_run(pilot, "tab-stage2")
            form.query_one("#s2-target").focus()
            await pilot.pause()
            assert form.query_one("#s2-init").value == ("tiny-llama", 4, 0)  # the recorded runs' init
            assert form.query_one("#s2-method").value == "dtvg"
            form.query_one("#s2-target").value = "cb"
            await pilot.pause()
            sources = form.query_one("#s2-sources")
            assert sorted(o.value for o in sources.options) == ["mnli", "qnli", "rte", "sst2"]
            sources.select("qnli")
            await pilot.press("ctrl+l")  # dtvg needs the target's own stage-1 vector: cb's run failed
            assert isinstance(app.screen, NewRunScreen)
            assert "no finished stage-1 run of 'cb'" in str(form.query_one("#new-run-error").render())
            assert not new_runs(recorded_runs, before)
            form.query_one("#s2-target").value = "rte"
            await pilot.pause()
            assert sorted(o.value for o in sources.options) == ["mnli", "qnli", "sst2"]
            sources.select("mnli")
            sources.select("sst2")
            for field, value in {
                "steps": "3",
                "k_shot": "16",
                "max_eval": "16",
                "data_dir": str(data_dir),
            }.items():
                form.query_one(f"#s2-{field}").value = value
            await pilot.pause()
            await pilot.press("ctrl+l")
            await pilot.pause()
            assert isinstance(app.screen, RunsScreen), str(form.query_one("#new-run-error").render())
            (run_dir,) = new_runs(recorded_runs, before)
            pgids.append(int((run_dir / "worker.pid").read_text()))
            assert run_dir.name.endswith("-stage2-rte-dtvg")
            config = json.loads((run_dir / "config.json").read_text())
            assert (config["stage"], config["method"], config["target"]) == ("stage2", "dtvg", "rte")
            assert sorted(config["sources"]) == ["mnli", "qnli", "sst2"] and config["steps"] == 3
            assert set(config["stage1_runs"]) == {"mnli", "qnli", "sst2", "rte"}
            await wait_for_status(pilot, run_dir.name, ("completed",), run_dir)
            types = [e["type"] for e in recorded_events(run_dir)]
            assert types.count("step") == 3 and "group" in types, types
    finally:
        for pgid in pgids:
            kill_group(pgid)


@sync
async def test_stop_kill_resume_confirmations(runs_dir: Path, data_dir: Path):
    """A real long worker: stop (confirmed) checkpoints it, resume runs it again, kill ends its group."""
    config = stage1_config(
        "sst2",
        model="tiny-llama",
        prompt_length=4,
        steps=2000,
        eval_every=500,
        k_shot=16,
        max_eval=16,
        data_dir=str(data_dir),
    )
    run_dir = create_run(runs_dir, "stage1", "sst2", config)
    live = run_dir.name
    pgids = [launcher.launch_worker(run_dir)]

    def stepped_since(count: int):  # noqa: ANN202
        return lambda: sum(e["type"] == "step" for e in recorded_events(run_dir)) > count

    app = app_for(runs_dir)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            runs = app.screen
            assert runs.current_id == live
            await wait_until(pilot, stepped_since(0), WORKER_TIMEOUT, "stepping", interval=0.5)
            assert runs.summaries[live].status == "running"
            await pilot.press("u")  # a running run does not resume
            assert not isinstance(app.screen, ConfirmScreen)
            await pilot.press("s")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("n")  # declined: nothing happens
            await pilot.pause(0.5)
            assert runs.summaries[live].status == "running"
            await pilot.press("s", "y")
            await wait_for_status(pilot, live, ("stopped",), run_dir)
            assert (run_dir / "checkpoint" / "state.safetensors").is_file()
            assert launcher.wait_for_exit(pgids[0], 5) and not group_members(pgids[0])
            await pilot.press("s")  # a stopped run cannot be stopped
            assert not isinstance(app.screen, ConfirmScreen)
            steps = sum(e["type"] == "step" for e in recorded_events(run_dir))
            await pilot.press("u")  # resume: no confirmation, a new worker
            pgids.append(int((run_dir / "worker.pid").read_text()))
            assert pgids[1] != pgids[0]
            await wait_for_status(pilot, live, ("pending", "running"), run_dir)
            await wait_until(pilot, stepped_since(steps), WORKER_TIMEOUT, "stepping again", interval=0.5)
            assert runs.summaries[live].status == "running"
            await pilot.press("k")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("y")
            await wait_for_status(pilot, live, ("killed",), run_dir)
            assert launcher.wait_for_exit(pgids[1], 5) and not group_members(pgids[1])
            assert recorded_events(run_dir)[-1]["type"] != "run_finished"  # SIGKILL: no last word
    finally:
        for pgid in pgids:
            kill_group(pgid)
