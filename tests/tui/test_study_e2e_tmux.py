"""End to end: the installed `dtvg-tui --study FILE` in tmux starts a real tiny study and sees its table fill.

Real pipeline and workers (tiny random Llama, the shared task data): one source, one target, `pt` and
`dtvg`, two steps each; about 30 s on an idle 2-core machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SESSION = f"dtvg-e2e-study-{os.getpid()}"

STUDY = """\
name = "e2e-study"
model = "tiny-llama"
prompt_length = 4
data_dir = "{data}"
sources = ["mnli"]
targets = ["rte"]
methods = ["pt", "dtvg"]
[stage1]
steps = 2
eval_every = 2
k_shot = 8
max_eval = 8
[stage2]
steps = 2
eval_every = 2
k_shot = 8
max_eval = 8
"""


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


def screen() -> str:
    return tmux("capture-pane", "-p", "-t", SESSION)


def wait_for(text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    shown = ""
    while time.monotonic() < deadline:
        shown = screen()
        if text in shown:
            return shown
        time.sleep(0.5)
    raise AssertionError(f"{text!r} did not appear within {timeout} s; the screen shows:\n{shown}")


def test_dtvg_tui_study_starts_a_tiny_study_and_shows_its_table(tmp_path: Path, data_dir: Path):
    assert shutil.which("tmux"), "tmux is not installed: apt-get install -y tmux"
    entry = Path(sys.executable).parent / "dtvg-tui"
    assert entry.exists(), f"the dtvg-tui entry point is not installed at {entry}; pip install -e ."
    runs = tmp_path / "runs"
    runs.mkdir()
    study = tmp_path / "e2e-study.toml"
    study.write_text(STUDY.format(data=data_dir))
    env = f"TEXTUAL_ANIMATIONS=none TZ=UTC DTVG_KEYMAP= {entry} --runs-dir {runs} --study {study}"
    tmux("new-session", "-d", "-s", SESSION, "-x", "160", "-y", "45")
    subprocess.run(["tmux", "resize-window", "-t", SESSION, "-x", "160", "-y", "45"], capture_output=True)
    tmux("send-keys", "-t", SESSION, f"exec env {env}", "Enter")
    try:
        shown = wait_for("0/4 done", 20)  # mnli, rte's own stage-1 run (dtvg starts from it), pt, dtvg
        assert "rte (accuracy)" in shown and "pipeline not running" in shown
        tmux("send-keys", "-t", SESSION, "g")
        shown = wait_for("4/4 done", 300)
        deadline = time.monotonic() + 30  # the table follows the count, its columns a refresh later
        while time.monotonic() < deadline:
            table = next(line for line in screen().splitlines() if "rte (accuracy)" in line)
            if table.count("1/1") == 2 and "★" in table:
                break
            time.sleep(0.5)
        assert table.count("±") == 2 and table.count("1/1") == 2 and "★" in table, screen()
        assert "complete" in screen()
        tmux("send-keys", "-t", SESSION, "e")
        wait_for("Exported", 10)
        assert (runs / "e2e-study-table.md").read_text().startswith("## Test score")
        tmux("send-keys", "-t", SESSION, "q")
        time.sleep(1)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", SESSION], capture_output=True)
        for pidfile in [*runs.glob("*/worker.pid"), *runs.glob("_pipelines/*.pid")]:
            try:  # leave nothing running when the test fails
                os.killpg(int(pidfile.read_text()), 9)
            except (OSError, ValueError):
                pass
