"""The Pipeline tab of the New run screen launches a real tiny pipeline (`dtvg run pipeline FILE`).

Real engine, tiny random Llama, the shared task data: stage 1 on one source, then stage 2 `pt` on one
target, two steps each. The Runs screen must show both runs completed, as a user would see them.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from dtvg_tui.app import DtvgApp
from dtvg_tui.screens.new_run import NewRunScreen
from dtvg_tui.screens.runs import RunsScreen

from .conftest import settle
from .helpers import screen_text, sync

TIMEOUT = 180.0
"""Seconds the pipeline may take (about 15 s on an idle 2-core machine: two workers importing torch)."""


def pipeline_pids(marker: str) -> list[int]:
    """Pids of the processes whose command line holds `marker` (the pipeline file's path)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


@sync
async def test_pipeline_tab_runs_a_tiny_pipeline(runs_dir: Path, data_dir: Path, tmp_path: Path):
    toml = tmp_path / "tiny-study.toml"
    toml.write_text(
        f"""name = "tiny-study"
model = "tiny-llama"
prompt_length = 4
data_dir = "{data_dir}"
sources = ["mnli"]
targets = ["rte"]
methods = ["pt"]

[stage1]
steps = 2
k_shot = 16
max_eval = 16

[stage2]
steps = 2
k_shot = 16
max_eval = 16
"""
    )
    app = DtvgApp(runs_dir, refresh_interval=0.3, follow_interval=0.2)
    try:
        async with app.run_test(size=(140, 45)) as pilot:
            await settle(pilot)
            assert "No runs yet" in screen_text(app)
            await pilot.press("n")
            form = app.screen
            assert isinstance(form, NewRunScreen)
            form.query_one("#new-run-tabs").active = "tab-pipeline"
            await pilot.pause()
            form.query_one("#pl-file").focus()
            await pilot.press(*str(toml), "ctrl+l")
            await pilot.pause()
            assert isinstance(app.screen, RunsScreen), str(form.query_one("#new-run-error").render())
            runs = app.screen
            started = time.monotonic()
            deadline = started + TIMEOUT
            while time.monotonic() < deadline:
                await pilot.pause(0.5)
                statuses = {r.split("-", 2)[2]: runs.summaries[r].status for r in runs.shown}
                if statuses == {"stage1-mnli": "completed", "stage2-rte-pt-s0": "completed"}:
                    break
                assert "failed" not in statuses.values(), statuses
            else:
                logs = "\n".join(p.read_text() for p in (runs_dir / "_pipelines").glob("*.log"))
                raise AssertionError(f"pipeline runs not completed in {TIMEOUT} s: {statuses}\n{logs}")
            print(f"pipeline runs completed {time.monotonic() - started:.1f} s after launch")
            text = screen_text(app)
            assert text.count("completed") >= 2 and "stage2-rte-pt-s0" in text and "2/2" in text
            for _ in range(40):  # the pipeline writes its results table after its last run
                if (runs_dir / "tiny-study-results.md").is_file():
                    break
                await pilot.pause(0.25)
            assert "| target | pt | constant |" in (runs_dir / "tiny-study-results.md").read_text()
            (log,) = (runs_dir / "_pipelines").glob("*-tiny-study.log")
            assert "results:" in log.read_text()
    finally:
        for pid in pipeline_pids(str(toml)):  # leave nothing running when the test fails
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
