"""End to end: the installed `dtvg-tui` in tmux launches a tiny stage-1 run from the form and sees it finish.

Needs tmux and the real worker (tiny random Llama, bundled data); about 15 s, so it runs with the fast suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SESSION = f"dtvg-e2e-{os.getpid()}"


def tmux(*args: str) -> str:
    out = subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout
    if args[0] == "send-keys":
        time.sleep(0.3)  # let the app move the focus before the next keys arrive
    return out


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


def test_launch_stage1_from_the_form_and_see_it_finish(tmp_path: Path):
    assert shutil.which("tmux"), "tmux is not installed: apt-get install -y tmux"
    entry = Path(sys.executable).parent / "dtvg-tui"
    assert entry.exists(), f"the dtvg-tui entry point is not installed at {entry}; pip install -e ."
    runs = tmp_path / "runs"
    runs.mkdir()
    env = f"TEXTUAL_ANIMATIONS=none TZ=UTC DTVG_KEYMAP= {entry} --runs-dir {runs}"
    # Start a shell, size its window, then start the app in it (so the app sees 200x50 from the start).
    tmux("new-session", "-d", "-s", SESSION, "-x", "200", "-y", "50")
    subprocess.run(["tmux", "resize-window", "-t", SESSION, "-x", "200", "-y", "50"], capture_output=True)
    tmux("send-keys", "-t", SESSION, f"exec env {env}", "Enter")
    try:
        wait_for("No runs yet", 20)
        tmux("send-keys", "-t", SESSION, "n")
        wait_for("Tasks (space to pick", 10)
        tmux("send-keys", "-t", SESSION, "space")  # the first task: mnli
        fields = [("tiny-llama",), ("4",), None, ("3",), ("2",), None, None, ("3",), ("8",)]
        for (
            value
        ) in fields:  # model, prompt length, init seed, steps, batch, lr, k-shot, eval every, max eval
            tmux("send-keys", "-t", SESSION, "Tab")
            if value:
                tmux("send-keys", "-t", SESSION, "C-u")
                tmux("send-keys", "-t", SESSION, "-l", value[0])
        wait_for("tiny-llama", 15)  # never launch the real 135M model here
        deadline = time.monotonic() + 15  # under load the form takes a while to catch up with the keys
        while "✗" in (form := screen()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "✗" not in form, form
        tmux("send-keys", "-t", SESSION, "C-l")
        wait_for("stage1-mnli", 15)
        shown = wait_for("completed", 240)
        assert "tiny-llama" in shown and "3/3" in shown
        run_dirs = [p for p in runs.iterdir() if p.name.endswith("-stage1-mnli")]
        assert len(run_dirs) == 1 and (run_dirs[0] / "tpv.safetensors").is_file()
        assert '"completed"' in (runs / "history.json").read_text()
        tmux("send-keys", "-t", SESSION, "q")
        time.sleep(1)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", SESSION], capture_output=True)
        for pidfile in runs.glob("*/worker.pid"):  # leave no worker behind when the test fails
            try:
                os.killpg(int(pidfile.read_text()), 9)
            except (OSError, ValueError):
                pass
