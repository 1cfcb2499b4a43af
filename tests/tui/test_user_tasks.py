"""The dashboard offers the user's tasks ($DTVG_TASKS) and refuses a bad task file at startup."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dtvg_engine.train import tasks

from .helpers import sync
from .test_pilot import app_for, open_new_run

USER_TASK = """
[tasks.my_rte]
data = "{data}"
kind = "classification"
template = "{{sentence1}} Question: {{sentence2}} True or false? Answer:"
label_words = [" true", " false"]
size = "small"
"""


@sync
async def test_new_run_form_lists_user_tasks(
    runs_dir: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks, "_USER_TASKS", {})
    file = tmp_path / "mine.toml"
    file.write_text(USER_TASK.format(data=data_dir / "rte"))
    monkeypatch.setenv(tasks.TASKS_ENV, str(file))
    tasks.use_file(None)  # what dtvg-tui does at startup
    app = app_for(runs_dir)
    async with app.run_test(size=(120, 60)) as pilot:
        form = await open_new_run(pilot, "tab-stage1")
        picker = form.query_one("#s1-tasks")
        offered = [picker.get_option_at_index(i).value for i in range(picker.option_count)]
        assert "my_rte" in offered and "rte" in offered and "boolq" not in offered
        form.query_one("#new-run-tabs").active = "tab-stage2"
        await pilot.pause()
        targets = [value for _, value in form.query_one("#s2-target")._options]
        assert "my_rte" in targets


def test_a_bad_task_file_stops_the_dashboard_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "mine.toml"
    bad.write_text("[tasks.my_rte\n")
    result = subprocess.run(
        [sys.executable, "-c", "from dtvg_tui.app import main; main([])"],
        capture_output=True,
        text=True,
        env={**os.environ, tasks.TASKS_ENV: str(bad)},
        timeout=60,
    )
    assert result.returncode == 2 and f"{bad}: not valid TOML" in result.stderr
    assert len(result.stderr.splitlines()) == 1
