"""The dashboard on event files with damaged lines: it reads them as the CLI does (issue 11, item 8).

Before, a line that parsed but lacked `time` emptied the Runs table, a damaged last step line made it
show step 0/300 where `dtvg runs list` showed 300/300, and a torn last line kept the run detail
"loading 99 %" for ever.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from live_worker import owning

from dtvg_engine.runs.runfolder import EVENTS, create_run
from dtvg_engine.runs.runstatus import summarize
from dtvg_tui.app import DtvgApp
from dtvg_tui.runindex import RunIndex
from dtvg_tui.screens.detail import RunDetailScreen

from .helpers import dead_pid, screen_text, sync

CONFIG = {"stage": "stage1", "method": "pt", "task": "rte", "model": "tiny-llama", "steps": 300}


def line(type: str, time: float, **fields) -> bytes:
    return json.dumps({"v": 1, "type": type, "time": time, **fields}, separators=(",", ":")).encode()


def completed_run(pid: int) -> list[bytes]:
    """A run that completed 300 steps; its best validation score, 0.75, came at step 200."""
    lines = [
        line("run_started", 1.0, run_id="r", stage="stage1", method="pt", task="rte", pid=pid, config=CONFIG)
    ]
    for n in range(1, 301):
        lines.append(line("step", 1.0 + n, step=n, loss=0.5, lr={"prompt": 0.3}, samples_per_s=8.0))
        if n % 100 == 0:
            primary = 0.5 + n / 800 if n < 300 else 0.6
            lines.append(
                line("eval", 1.5 + n, step=n, split="validation", metrics={}, primary=primary, best=n < 300)
            )
    return [*lines, line("run_finished", 400.0, status="completed", summary={}, error=None)]


def make_run(runs_dir: Path, label: str, lines: list[bytes], tail: bytes = b"") -> Path:
    run_dir = create_run(runs_dir, "stage1", label, CONFIG)
    (run_dir / EVENTS).write_bytes(b"".join(raw + b"\n" for raw in lines) + tail)
    return run_dir


def test_the_runs_table_reads_damaged_lines_as_the_cli_does(tmp_path: Path):
    runs = tmp_path / "runs"
    good = completed_run(pid=dead_pid())
    torn_step = line("step", 401.0, step=301, loss=0.5, lr={})[:40]  # a killed writer's half line
    damaged = {
        "torn-last-step": make_run(runs, "torn-last-step", [*good, torn_step]),
        "garbage-last-step": make_run(
            runs, "garbage", [*good, line("step", 401.0, step="x", loss=0.5, lr={})]
        ),
        "no-time": make_run(runs, "no-time", [*good[:-1], good[-1].replace(b'"time":400.0,', b"")]),
        "binary": make_run(runs, "binary", [good[0], b"\x00\xff\xfe", *good[1:]], tail=b'{"v":1,"ty'),
    }
    changed, _ = RunIndex(runs).scan()
    assert len(changed) == len(damaged)  # every run is listed, none takes the table down
    for summary in changed:
        assert summary == summarize(summary.run_dir)
    by_dir = {Path(s.run_dir): s for s in changed}
    for name in ("torn-last-step", "garbage-last-step", "binary"):
        summary = by_dir[damaged[name]]
        assert (summary.status, summary.step, summary.total_steps, summary.best_metric) == (
            "completed", 300, 300, 0.75,
        ), name  # fmt: skip
    no_time = by_dir[damaged["no-time"]]  # its finish is unreadable: the run died after step 300
    assert (no_time.step, no_time.status) == (300, "killed")


@sync
async def test_the_run_detail_finishes_loading_a_file_with_a_torn_last_line(tmp_path: Path):
    runs = tmp_path / "runs"
    lines = completed_run(pid=os.getpid())
    run_dir = make_run(runs, "torn", [*lines[:-1], b"\x00garbage"], tail=b'{"v":1,"type":"step","st')
    app = DtvgApp(runs, refresh_interval=0.3, follow_interval=0.1)
    with owning(run_dir):  # this process plays the worker, which is still running
        async with app.run_test(size=(160, 45)) as pilot:
            await pilot.pause(0.2)
            app.open_detail(run_dir)
            deadline = time.monotonic() + 10
            while not (isinstance(app.screen, RunDetailScreen) and not app.screen.reading):
                assert time.monotonic() < deadline, "the detail is still loading"
                await pilot.pause(0.05)
            await pilot.pause(0.3)
            detail = app.screen
            summary = summarize(run_dir)
            assert (
                (detail.series.step, detail.series.status)
                == (summary.step, summary.status)
                == (300, "running")
            )
            text = screen_text(app)
            assert "step 300/300" in text and "loading" not in text


def test_the_runs_table_is_not_fooled_by_a_second_type_key(tmp_path: Path):
    runs = tmp_path / "runs"
    good = completed_run(pid=dead_pid())[:-2]  # died after step 300, or did it?
    finish = b',"type":"run_finished","status":"failed","summary":{},"error":"disk full"}'
    for key in (b'"type"', b'"\\u0074ype"'):  # JSON keeps the last of two keys: this step line is a finish
        hostile = good[-1][:-1] + finish.replace(b'"type"', key)
        run_dir = make_run(runs, "hostile", [*good, hostile])
        (summary,) = [s for s in RunIndex(runs).scan()[0] if s.run_dir == str(run_dir)]
        assert summary == summarize(run_dir) and (summary.status, summary.error) == ("failed", "disk full")
