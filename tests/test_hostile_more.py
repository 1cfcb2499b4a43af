"""More of what a hostile user (or an unlucky one) does: a full disk, a worker that dies without a word,
an edited config, terminal escapes in names, odd arguments.

Each case is the real CLI (or the dashboard, or a real worker) on real files; a full disk is a real
filesystem with a size limit (tmpfs), so those tests need root and skip where mounting is not allowed.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import assert_bad_input, dtvg
from test_hostile import finished_run, new_run

from dtvg_engine.config import check_run_config
from dtvg_engine.errors import UserError
from dtvg_engine.runs import launcher
from dtvg_engine.runs.runfolder import EVENTS, PIDFILE
from dtvg_engine.runs.runmeta import read_meta, update_meta
from dtvg_engine.runs.runowner import read_pid
from dtvg_engine.runs.runstatus import summarize

TINY = ["--model", "tiny-llama", "--prompt-length", "4", "--k-shot", "16", "--max-eval", "16"]
TINY += ["--eval-every", "1", "--device", "cpu"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB filesystem (tmpfs) holding a runs directory; skips where mounting is not permitted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        (disk / "runs").mkdir()
        yield disk / "runs"
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(runs_dir: Path) -> None:
    """Write to the disk of `runs_dir` until it is full."""
    fd = os.open(runs_dir.parent / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)


# ----- a full disk: one line, nothing half-made, and a run's end explained --------------------------------


def test_a_full_disk_refuses_tags_notes_and_new_runs_in_one_line(small_disk: Path, data_dir: Path):
    run_dir = new_run(small_disk)
    fill(small_disk)
    before = sorted(os.listdir(small_disk))
    tagged = dtvg("runs", "tag", run_dir.name, "x", "--runs-dir", small_disk)
    assert "No space left on device; free some space" in assert_bad_input(tagged)
    noted = dtvg("runs", "note", run_dir.name, "hello", "--runs-dir", small_disk)
    assert "No space left on device" in assert_bad_input(noted)
    assert read_meta(run_dir) == {"tags": [], "note": ""}
    made = dtvg(
        "run", "stage1", "rte", "sst2", *TINY, "--detach", "--runs-dir", small_disk, "--data-dir", data_dir
    )
    assert "cannot create run" in assert_bad_input(made)
    assert sorted(os.listdir(small_disk)) == before  # no empty run folder left behind
    listed = dtvg("runs", "list", "--json", "--runs-dir", small_disk)
    assert listed.returncode == 0 and [d["run_id"] for d in json.loads(listed.stdout)] == [run_dir.name]


def test_a_full_disk_starts_no_worker(small_disk: Path):
    run_dir = new_run(small_disk)
    fill(small_disk)
    line = assert_bad_input(dtvg("run", "resume", run_dir.name, "--detach", "--runs-dir", small_disk))
    assert f"cannot start run {run_dir.name}: No space left on device" in line
    assert not (run_dir / PIDFILE).exists()


def test_a_disk_that_fills_during_training_ends_the_run_failed_with_the_reason(
    small_disk: Path, data_dir: Path
):
    started = dtvg(
        "run",
        "stage1",
        "rte",
        *TINY,
        "--steps",
        "50",
        "--detach",
        "--runs-dir",
        small_disk,
        "--data-dir",
        data_dir,
    )
    assert started.returncode == 0, started.stderr
    run_dir = small_disk / started.stdout.split()[-1]
    deadline = time.monotonic() + 120
    while b"run_started" not in (run_dir / EVENTS).read_bytes():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    fill(small_disk)
    while summarize(run_dir).status in ("pending", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    summary = summarize(run_dir)
    assert summary.status == "failed"
    assert "No space left on device" in summary.error
    assert f"dtvg run resume {run_dir.name}" in summary.error
    assert "No space left on device" in (run_dir / "worker.log").read_text()


# ----- every death leaves its reason ------------------------------------------------------------------------

LAST_WORDS = "import os, signal, sys; print('allocating 80 GB', file=sys.stderr, flush=True); "


def died(runs_dir: Path, code: str) -> tuple[Path, int]:
    """A run whose worker, a stand-in launched (and waited for) here, runs `code` and dies; its pid."""
    run_dir = new_run(runs_dir)
    pid = launcher.launch_worker(run_dir, command=[sys.executable, "-c", code])
    assert launcher.wait_for_exit(pid, timeout=60)
    return run_dir, pid


def test_a_worker_killed_by_a_signal_leaves_the_signal_and_its_last_words(runs_dir: Path):
    run_dir, pid = died(runs_dir, LAST_WORDS + "os.kill(os.getpid(), signal.SIGKILL)")
    shown = dtvg("runs", "show", run_dir.name, "--runs-dir", runs_dir)
    assert shown.returncode == 0, shown.stderr
    assert "status: killed" in shown.stdout
    reason = f"the worker (pid {pid}) was ended by SIGKILL (out of memory, or kill -9) before it finished"
    assert reason in " ".join(shown.stdout.split())  # the line as wrapped to the console's width
    assert "allocating 80 GB" in shown.stdout  # the end of its log
    listed = json.loads(dtvg("runs", "list", "--json", "--runs-dir", runs_dir).stdout)
    assert listed[0]["error"] == reason


def test_a_worker_that_exits_without_finishing_leaves_its_exit_code(runs_dir: Path):
    run_dir, pid = died(runs_dir, LAST_WORDS + "sys.exit(3)")
    assert summarize(run_dir).error == f"the worker (pid {pid}) exited with code 3 before it finished"


def test_a_worker_nobody_waited_for_says_so(runs_dir: Path):
    from tui.helpers import dead_pid

    run_dir = new_run(runs_dir)
    (run_dir / PIDFILE).write_text(f"{dead_pid()}\n")
    summary = summarize(run_dir)
    assert summary.status == "killed"
    assert "no exit status was recorded (nothing waited for it)" in summary.error


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGXCPU])
def test_a_detached_worker_records_the_signal_that_ended_it(runs_dir: Path, data_dir: Path, signum: int):
    """Nothing waits for a detached worker: it records its own end."""
    command = ["run", "stage1", "rte", *TINY, "--steps", "2000", "--detach"]
    started = dtvg(*command, "--runs-dir", runs_dir, "--data-dir", data_dir)
    assert started.returncode == 0, started.stderr
    run_dir = runs_dir / started.stdout.split()[-1]
    deadline = time.monotonic() + 120
    while not (run_dir / EVENTS).exists() or b"run_started" not in (run_dir / EVENTS).read_bytes():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pid = read_pid(run_dir)
    os.kill(pid, signum)
    while summarize(run_dir).status == "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    summary = summarize(run_dir)
    name = signal.Signals(signum).name
    assert (summary.status, summary.error) == (
        "killed",
        f"the worker (pid {pid}) was ended by {name} before it finished",
    )


def test_a_foreground_run_records_the_signal_that_killed_its_worker(runs_dir: Path, data_dir: Path):
    command = [sys.executable, "-m", "dtvg_engine.cli", "run", "stage1", "rte", *TINY, "--steps", "500"]
    command += ["--runs-dir", str(runs_dir), "--data-dir", str(data_dir)]
    cli = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (run_dirs := [p for p in runs_dir.glob("*-stage1-rte") if (p / EVENTS).exists()]):
        assert time.monotonic() < deadline and cli.poll() is None
        time.sleep(0.05)
    (run_dir,) = run_dirs
    while b"run_started" not in (run_dir / EVENTS).read_bytes():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pid = read_pid(run_dir)
    os.kill(pid, signal.SIGKILL)  # what the out-of-memory killer does
    _, err = cli.communicate(timeout=120)
    assert cli.returncode == 1, err
    summary = summarize(run_dir)
    assert summary.status == "killed"
    assert (
        summary.error
        == f"the worker (pid {pid}) was ended by SIGKILL (out of memory, or kill -9) before it finished"
    )


def test_the_dashboard_detail_shows_why_a_worker_died(runs_dir: Path):
    from tui.helpers import screen_text

    from dtvg_tui.app import DtvgApp
    from dtvg_tui.screens.detail import RunDetailScreen

    run_dir, _ = died(runs_dir, LAST_WORDS + "os.kill(os.getpid(), signal.SIGKILL)")

    async def shown() -> str:
        app = DtvgApp(runs_dir, refresh_interval=0.2, follow_interval=0.1)
        async with app.run_test(size=(160, 45)) as pilot:
            await pilot.pause(0.5)
            app.open_detail(run_dir)
            deadline = time.monotonic() + 10
            while not (isinstance(app.screen, RunDetailScreen) and not app.screen.reading):
                assert time.monotonic() < deadline
                await pilot.pause(0.05)
            await pilot.pause(0.5)
            return screen_text(app)

    text = asyncio.run(shown())
    assert "was ended by SIGKILL" in text
    assert "allocating 80 GB" in text


# ----- an edited config.json is checked as a new run's -----------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("steps", "abc", "steps must be an integer of at least 1 (got 'abc')"),
        ("lr", -5, "lr must be a finite number above 0 (got -5)"),
        ("stage", "stage9", "stage must be stage1 or stage2 (got 'stage9')"),
        ("seed", 2**63 + 1, "seed must be an integer from 0 to 4294967295 (got 9223372036854775809)"),
        ("task", "nosuchtask", "unknown task 'nosuchtask'"),
    ],
)
def test_resume_checks_an_edited_config_like_a_new_run(runs_dir: Path, key: str, value: object, said: str):
    run_dir = new_run(runs_dir)
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, key: value}))
    for detach in (["--detach"], []):
        line = assert_bad_input(dtvg("run", "resume", run_dir.name, *detach, "--runs-dir", runs_dir))
        assert f"{run_dir / 'config.json'}: {said}" in line
    with pytest.raises(UserError, match="fix the file, or start a new run"):
        launcher.launch_worker(run_dir)  # the dashboard's and the pipeline's way in
    assert not (run_dir / PIDFILE).exists() and not (run_dir / EVENTS).exists()


def test_the_keys_the_engine_adds_to_a_config_pass(runs_dir: Path):
    run_dir = new_run(runs_dir)
    config = json.loads((run_dir / "config.json").read_text())
    check_run_config({**config, "init_sha256": "0" * 64, "split": {"rule": "small"}}, run_dir / "config.json")


def test_a_new_run_refuses_a_seed_above_the_largest(runs_dir: Path, data_dir: Path):
    made = dtvg(
        "run", "stage1", "rte", *TINY, "--seed", str(2**63), "--runs-dir", runs_dir, "--data-dir", data_dir
    )
    assert "--seed must be an integer from 0 to 4294967295" in assert_bad_input(made)
    assert os.listdir(runs_dir) == []


# ----- terminal escapes in names, tags and notes are shown as text -----------------------------------------

OSC = "\x1b]0;pwned\x07"
"""An escape sequence that retitles the terminal window, as a hostile tag or note may hold."""


def hostile_run(runs_dir: Path) -> Path:
    """A finished run whose folder name, tag and note hold terminal escapes."""
    run_dir = finished_run(runs_dir)
    update_meta(run_dir, tags=[f"tag{OSC}"], note=f"note\x1b[2J{OSC}")
    renamed = run_dir.with_name(run_dir.name + "\x1b[31m")
    run_dir.rename(renamed)
    return renamed


def test_list_and_show_escape_what_a_terminal_would_act_on(runs_dir: Path):
    run_dir = hostile_run(runs_dir)
    listed = dtvg("runs", "list", "--runs-dir", runs_dir, env={**os.environ, "COLUMNS": "300"})
    shown = dtvg("runs", "show", run_dir.name, "--runs-dir", runs_dir)
    for result in (listed, shown):
        assert result.returncode == 0, result.stderr
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout
        assert "\\x1b]0;pwned\\x07" in result.stdout
    assert "\\x1b[31m" in listed.stdout  # the folder name
    assert "note\\x1b[2J" in shown.stdout
    tagged = dtvg("runs", "tag", run_dir.name, "x", "--runs-dir", runs_dir)
    assert "\x1b" not in tagged.stdout and tagged.stdout.startswith("tag\\x1b]0;pwned\\x07 x")


def test_the_dashboard_escapes_what_a_terminal_would_act_on(runs_dir: Path):
    from dtvg_tui.app import DtvgApp

    run_dir = hostile_run(runs_dir)

    async def shown() -> list[str]:
        app = DtvgApp(runs_dir, refresh_interval=0.2)
        async with app.run_test(size=(200, 40)) as pilot:
            for _ in range(100):
                await pilot.pause(0.1)
                if run_dir.name in getattr(app.screen, "shown", []):
                    break
            await pilot.pause(0.3)
            return [
                str(getattr(c, "plain", c)) for c in app.screen.query_one("#runs-table").get_row(run_dir.name)
            ]

    cells = asyncio.run(shown())
    assert not any("\x1b" in cell or "\x07" in cell for cell in cells)
    assert run_dir.name.replace("\x1b", "\\x1b") in cells
    assert "tag\\x1b]0;pwned\\x07" in cells


@pytest.mark.parametrize("tag", ["", "  ", "-x"])
def test_a_tag_may_not_be_empty_nor_start_with_a_dash(runs_dir: Path, tag: str):
    run_dir = new_run(runs_dir)
    with pytest.raises(UserError, match="a tag may not be empty|starts with '-'"):
        update_meta(run_dir, tags=[tag])  # how the dashboard sets tags
    if tag != "-x":  # on the command line "-x" removes x
        assert "a tag may not be empty" in assert_bad_input(
            dtvg("runs", "tag", run_dir.name, tag, "--runs-dir", runs_dir)
        )
    assert read_meta(run_dir)["tags"] == []


# ----- smaller things: odd arguments are one line, files have the README's modes --------------------------


def test_list_refuses_an_unknown_status(runs_dir: Path):
    line = assert_bad_input(dtvg("runs", "list", "--status", "bogus", "--runs-dir", runs_dir))
    assert "--status 'bogus' is not a status; use one of pending, running" in line


@pytest.mark.parametrize("name", [" ", ".hidden", " padded"])
def test_a_study_name_may_not_be_blank_padded_or_hidden(tmp_path: Path, name: str):
    from dtvg_engine.studies.studyfile import load_experiment

    study = tmp_path / "study.toml"
    study.write_text(f'name = "{name}"\nsources = ["sst2"]\ntargets = ["rte"]\nmethods = ["pt"]\n')
    with pytest.raises(UserError, match="name must be a plain file name"):
        load_experiment(study)


def test_a_data_dir_that_is_a_file_is_said_to_be_one(runs_dir: Path, tmp_path: Path):
    file = tmp_path / "data.txt"
    file.write_text("not a folder\n")
    made = dtvg("run", "stage1", "rte", *TINY, "--runs-dir", runs_dir, "--data-dir", file)
    assert f"data dir {file} is not a folder" in assert_bad_input(made)


def test_a_fifo_as_init_prompt_is_refused_not_waited_on(runs_dir: Path, tmp_path: Path, data_dir: Path):
    fifo = tmp_path / "prompt.safetensors"
    os.mkfifo(fifo)
    made = dtvg(
        "run", "stage1", "rte", *TINY, "--init-prompt", fifo, "--runs-dir", runs_dir, "--data-dir", data_dir,
        timeout=60,
    )  # fmt: skip
    assert f"--init-prompt {fifo} is not a regular file" in assert_bad_input(made)


def test_rows_labelled_minus_one_are_left_out_with_a_line(tmp_path: Path, data_dir: Path, capsys):
    from dtvg_engine.train.data import load_splits

    copy = tmp_path / "data" / "rte"
    copy.mkdir(parents=True)
    for name in ("train.jsonl", "validation.jsonl"):
        (copy / name).write_bytes((data_dir / "rte" / name).read_bytes())
    unlabelled = {"sentence1": "a", "sentence2": "b", "label": -1, "idx": 99999}
    with open(copy / "train.jsonl", "a") as f:
        f.write(json.dumps(unlabelled) + "\n" + json.dumps(unlabelled) + "\n")
    load_splits("rte", copy.parent, seed=0, k_shot=16, max_eval=16)
    assert f"{copy / 'train.jsonl'}: 2 row(s) labelled -1 (no gold label) left out" in capsys.readouterr().err


@pytest.fixture
def usual_umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_adapter_weights_are_written_0644(llama, tmp_path: Path, usual_umask: None, recwarn):
    import torch

    from dtvg_engine.train.export import export_adapter

    adapter = export_adapter(llama, torch.zeros(4, llama.hidden_size), tmp_path / "adapter")
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in adapter.iterdir()}
    assert modes["adapter_model.safetensors"] == modes["adapter_config.json"] == "0o644"
    assert not [w for w in recwarn if "Unable to fetch remote file" in str(w.message)]  # saved offline


def test_tpv_combine_output_is_written_0644(runs_dir: Path, data_dir: Path, usual_umask: None):
    done = dtvg("run", "stage1", "rte", *TINY, "--steps", "2", "--runs-dir", runs_dir, "--data-dir", data_dir)
    assert done.returncode == 0, done.stderr
    out = runs_dir.parent / "combo.safetensors"
    combined = dtvg("tpv", "combine", "rte", "--out", out, "--runs-dir", runs_dir)
    assert combined.returncode == 0, combined.stderr
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in runs_dir.parent.iterdir()) == ["combo.safetensors", "runs"]  # no temp file


# ----- a table of runs shows whole values ------------------------------------------------------------------


def in_terminal(*args: object, columns: int) -> str:
    """What `dtvg args` prints in a terminal `columns` wide (a pseudo-terminal), escape codes removed."""
    import fcntl
    import pty
    import re
    import struct
    import termios

    from cli_helpers import DTVG

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([DTVG, *map(str, args)], stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    output = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal's other end closed
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    assert proc.wait(timeout=60) == 0, output
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output.decode())


def test_list_piped_prints_whole_values(runs_dir: Path):
    run_dir = finished_run(runs_dir)
    listed = dtvg("runs", "list", "--runs-dir", runs_dir, env={**os.environ, "COLUMNS": "80"})
    assert listed.returncode == 0 and "…" not in listed.stdout
    for whole in (run_dir.name, "stage1", "tiny-llama", "completed", "best_metric", "tags"):
        assert whole in listed.stdout


def test_list_in_80_columns_shows_the_columns_that_fit_whole(runs_dir: Path):
    run_dir = finished_run(runs_dir)
    shown = in_terminal("runs", "list", "--runs-dir", runs_dir, columns=80)
    assert "…" not in shown
    assert all(len(line) <= 80 for line in shown.splitlines())
    for whole in (run_dir.name, "stage1", "tiny-llama", "completed"):
        assert whole in shown
