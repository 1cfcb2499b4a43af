"""A runs directory may come from someone else (issue 11): what the tool promises about it.

Checkpoints are data (a hostile or damaged one is refused in one line, and nothing in it runs), every
RUN resolves inside the runs directory, at most one worker owns a run folder, tags and notes are
changed under a lock, a run that never started is resumable and removable, run files are readable by
others, and a read-only, odd or damaged runs directory gives one clear line, never a traceback.
Everything goes through real `dtvg` and worker subprocesses, as a user would.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import assert_bad_input

from dtvg_engine.config import stage1_config
from dtvg_engine.errors import UserError
from dtvg_engine.runs import atomic, launcher, runactions, runfolder, runmeta, runowner, runstatus
from dtvg_engine.runs.events import Event, EventWriter, RunFinished, RunStarted

_VENV_DTVG = Path(sys.executable).with_name("dtvg")
DTVG = str(_VENV_DTVG) if _VENV_DTVG.exists() else "dtvg"
WORKER_TIMEOUT = 180


def dtvg(*args: object, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DTVG, *map(str, args)], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def wait_for(predicate, timeout: float, what: str, run_dir: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            log = (
                (run_dir / runfolder.LOG).read_text()[-3000:]
                if run_dir and (run_dir / runfolder.LOG).exists()
                else ""
            )
            pytest.fail(f"timed out after {timeout}s waiting for {what}\n{log}")
        time.sleep(0.1)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def tiny_run(runs_dir: Path, data_dir: Path, task: str = "rte", steps: int = 2000) -> Path:
    """A created (never launched) stage-1 run on tiny-llama; long unless `steps` says otherwise."""
    config = stage1_config(
        task, model="tiny-llama", prompt_length=4, k_shot=16, max_eval=16, steps=steps, eval_every=500,
        batch_size=4, max_input_tokens=32, device="cpu", data_dir=str(data_dir),
    )  # fmt: skip
    return runfolder.create_run(runs_dir, "stage1", task, config)


def emit(run_dir: Path, event: Event) -> None:
    with EventWriter(run_dir / runfolder.EVENTS) as writer:
        writer.emit(event)


def killed_run(runs_dir: Path, data_dir: Path) -> Path:
    """A run whose worker started and died without a word (status "killed")."""
    run = tiny_run(runs_dir, data_dir)
    emit(run, RunStarted(run_id=run.name, stage="stage1", method="pt", task="rte", pid=dead_pid(), config={}))
    return run


def stopped_run(runs_dir: Path, data_dir: Path) -> Path:
    run = killed_run(runs_dir, data_dir)
    emit(run, RunFinished(status="stopped", summary={}, error=None))
    return run


def events_of(run_dir: Path) -> list[dict]:
    """The run's events as written (complete lines only: a worker may be writing the last one)."""
    try:
        text = (run_dir / runfolder.EVENTS).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def starts(run_dir: Path) -> int:
    return sum(e["type"] == "run_started" for e in events_of(run_dir))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` and its bytes: to show that nothing was touched."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def groups():
    """Process groups of workers a test started; whatever is left of them is killed afterwards."""
    pgids: list[int] = []
    yield pgids
    for pgid in pgids:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        launcher.wait_for_exit(pgid, 10)


# --- 1. checkpoints are data ----------------------------------------------------------------------------


class _Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant_hostile_checkpoint(run_dir: Path, marker: Path) -> Path:
    """An old-style checkpoint/state.pt whose pickle runs code, as a colleague's run folder might hold."""
    path = run_dir / runfolder.CHECKPOINT / "state.pt"
    path.parent.mkdir()
    path.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    return path


@pytest.mark.parametrize("detach", [False, True])
def test_resume_never_runs_a_pickled_checkpoint(runs_dir, data_dir, tmp_path, detach):
    run = killed_run(runs_dir, data_dir)
    marker = tmp_path / "pwned"
    plant_hostile_checkpoint(run, marker)
    before = snapshot(run)
    result = dtvg("run", "resume", run.name, "--runs-dir", runs_dir, *(["--detach"] if detach else []))
    line = assert_bad_input(result)
    assert "state.pt" in line and "never loaded" in line and "step 0" in line
    time.sleep(0.5)  # a worker, had one started, would be unpickling by now
    assert not marker.exists()
    assert snapshot(run) == before  # untouched: no event, no pidfile, still resumable
    assert runstatus.summarize(run).status == "killed"


def test_the_launcher_refuses_a_pickled_checkpoint(runs_dir, data_dir, tmp_path):
    """The TUI's `u` and the pipeline's automatic resume launch through `launch_worker`."""
    run = killed_run(runs_dir, data_dir)
    marker = tmp_path / "pwned"
    plant_hostile_checkpoint(run, marker)
    with pytest.raises(UserError, match="state.pt"):
        launcher.launch_worker(run)
    assert not (run / runfolder.PIDFILE).exists() and not marker.exists()


def test_a_worker_started_by_hand_never_unpickles(runs_dir, data_dir, tmp_path):
    """`python -m dtvg_engine.worker RUN` (as a Slurm job runs it) fails the run in one line instead."""
    run = killed_run(runs_dir, data_dir)
    marker = tmp_path / "pwned"
    plant_hostile_checkpoint(run, marker)
    worker = subprocess.run(
        [sys.executable, "-m", "dtvg_engine.worker", str(run)], capture_output=True, text=True, timeout=300
    )
    assert worker.returncode == 1, worker.stderr
    assert not marker.exists()
    summary = runstatus.summarize(run)
    assert summary.status == "failed" and "never loaded" in summary.error


def test_a_damaged_checkpoint_is_one_line_naming_the_file(runs_dir, data_dir):
    import torch

    from dtvg_engine.train.training import write_checkpoint

    run = killed_run(runs_dir, data_dir)
    path = run / runfolder.CHECKPOINT / runfolder.CHECKPOINT_FILE
    path.parent.mkdir()
    write_checkpoint(path, {"state": {"step": 3}, "tuner": {"weight": torch.ones(64, 8)}})
    assert runfolder.checkpoint_path(run) == path
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # cut off mid-tensor, as a full disk leaves it
    line = assert_bad_input(dtvg("run", "resume", run.name, "--runs-dir", runs_dir))
    assert str(path) in line and "truncated" in line and f"delete {path.parent}" in line
    path.write_bytes(b"\x00garbage" * 3)
    assert "is not a checkpoint" in assert_bad_input(dtvg("run", "resume", run.name, "--runs-dir", runs_dir))


def test_checkpoint_round_trip_is_exact(tmp_path):
    """AdamW and its schedule resume bit for bit from the tensors + JSON format."""
    import torch

    from dtvg_engine.train.training import linear_schedule, load_checkpoint, write_checkpoint

    def setup():
        torch.manual_seed(0)
        weight = torch.nn.Parameter(torch.randn(4, 8))
        scale = torch.nn.Parameter(torch.ones(4))
        groups = [{"params": [weight], "lr": 0.3, "name": "prompt"}, {"params": [scale], "lr": 0.1}]
        optimizer = torch.optim.AdamW(groups, weight_decay=1e-5)
        return weight, scale, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(2, 9))

    def train(parts, steps):
        weight, scale, optimizer, schedule = parts
        for step in steps:
            target = torch.randn(4, 8, generator=torch.Generator().manual_seed(step))
            loss = (weight * scale[:, None] - target).pow(2).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()

    straight = setup()
    train(straight, range(3))
    path = tmp_path / "state.safetensors"
    state = {"best_metric": float("nan"), "best_step": None, "group": ("a", "b")}
    write_checkpoint(
        path,
        {
            "tuner": {"weight": straight[0].detach(), "scale": straight[1].detach()},
            "optimizer": straight[2].state_dict(),
            "schedule": straight[3].state_dict(),
            "state": state,
        },
    )
    train(straight, range(3, 7))

    resumed = setup()
    saved = load_checkpoint(path)
    with torch.no_grad():
        resumed[0].copy_(saved["tuner"]["weight"])
        resumed[1].copy_(saved["tuner"]["scale"])
    resumed[2].load_state_dict(saved["optimizer"])
    resumed[3].load_state_dict(saved["schedule"])
    assert saved["state"]["group"] == ("a", "b") and saved["state"]["best_step"] is None
    train(resumed, range(3, 7))
    assert torch.equal(straight[0], resumed[0]) and torch.equal(straight[1], resumed[1])


# --- 2. every RUN resolves inside --runs-dir ------------------------------------------------------------


@pytest.fixture
def elsewhere(tmp_path, data_dir) -> Path:
    """A run folder outside the runs directory (another project's)."""
    return tiny_run(tmp_path / "other", data_dir)


COMMANDS_TAKING_RUN = [
    ["runs", "show"],
    ["runs", "rm"],
    ["runs", "stop"],
    ["runs", "tag", "{run}", "x"],
    ["runs", "note", "{run}", "x"],
    ["runs", "compare", "{run}", "{run}"],
    ["run", "resume"],
    ["tpv", "show"],
]


def command_for(command: list[str], ref: str) -> list[str]:
    args = [a.replace("{run}", ref) for a in command]
    return args if "{run}" in command else [*args, ref]


@pytest.mark.parametrize("command", COMMANDS_TAKING_RUN, ids=" ".join)
def test_a_path_outside_the_runs_dir_is_refused(runs_dir, elsewhere, command):
    before = snapshot(elsewhere.parent)
    for ref in (str(elsewhere), f"../other/{elsewhere.name}", f"{runs_dir}/../other/{elsewhere.name}"):
        line = assert_bad_input(dtvg(*command_for(command, ref), "--runs-dir", runs_dir))
        assert "not inside the runs directory" in line, ref
    assert snapshot(elsewhere.parent) == before


def test_runs_rm_dot_dot_is_refused_even_when_the_parent_looks_like_a_run(tmp_path, data_dir):
    project = tmp_path / "project"
    runs_dir = project / "runs"
    runs_dir.mkdir(parents=True)
    # the parent looks like a finished run
    atomic.write_json_atomic(project / runfolder.CONFIG, {"stage": "stage1"})
    emit(project, RunStarted(run_id="x", stage="stage1", method="pt", task="rte", pid=dead_pid(), config={}))
    emit(project, RunFinished(status="completed", summary={}, error=None))
    (project / "thesis.tex").write_text("years of work")
    for ref in ("..", ".", "runs/..", "", "../runs"):
        assert_bad_input(dtvg("runs", "rm", ref, "--runs-dir", runs_dir))
    assert (project / "thesis.tex").read_text() == "years of work" and runs_dir.is_dir()


def test_a_path_to_a_run_inside_is_accepted(runs_dir, data_dir):
    run = tiny_run(runs_dir, data_dir)
    for ref in (str(run), f"{run}/", f"{runs_dir}/./{run.name}"):
        shown = dtvg("runs", "show", ref, "--json", "--runs-dir", runs_dir)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["run_id"] == run.name


def test_a_symlinked_run_is_refused_and_rm_removes_only_the_link(runs_dir, elsewhere):
    link = runs_dir / "20990101-000000-stage1-link"
    link.symlink_to(elsewhere, target_is_directory=True)
    before = snapshot(elsewhere)
    listed = dtvg("runs", "list", "--json", "--runs-dir", runs_dir)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []  # not a run of this directory
    for command in (
        ["runs", "show", link.name],
        ["runs", "tag", link.name, "x"],
        ["run", "resume", link.name],
    ):
        assert "symbolic link" in assert_bad_input(dtvg(*command, "--runs-dir", runs_dir))
    removed = dtvg("runs", "rm", link.name, "--runs-dir", runs_dir)
    assert removed.returncode == 0, removed.stderr
    assert "link" in removed.stdout and not link.is_symlink()
    assert snapshot(elsewhere) == before  # the target is left as it was


# --- 4. tags and notes are never lost -------------------------------------------------------------------


def test_parallel_tag_and_note_commands_lose_nothing(runs_dir, data_dir):
    run = tiny_run(runs_dir, data_dir)
    tags = [f"t{i}" for i in range(8)]
    for round_ in range(2):
        commands = [[DTVG, "runs", "tag", run.name, f"{tag}-{round_}"] for tag in tags]
        commands.append([DTVG, "runs", "note", run.name, f"note {round_}"])
        procs = [
            subprocess.Popen(
                [*c, "--runs-dir", str(runs_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            for c in commands
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode()
    meta = runmeta.read_meta(run)
    assert sorted(meta["tags"]) == sorted(f"{t}-{r}" for t in tags for r in range(2))  # every confirmed tag
    assert meta["note"] == "note 1"
    listed = json.loads(dtvg("runs", "list", "--json", "--runs-dir", runs_dir).stdout)
    assert sorted(listed[0]["tags"]) == sorted(meta["tags"])


# --- 5. one worker per run ------------------------------------------------------------------------------

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_a_second_launch_is_refused_while_a_worker_owns_the_run(runs_dir, data_dir, groups):
    run = tiny_run(runs_dir, data_dir)
    groups.append(launcher.launch_worker(run, SLEEPER))
    assert runowner.run_owner(run) == groups[0]
    with pytest.raises(UserError, match=f"already has a worker \\(pid {groups[0]}\\)"):
        launcher.launch_worker(run, SLEEPER)
    assert runowner.read_pid(run) == groups[0]
    os.killpg(groups[0], signal.SIGKILL)  # kill -9: the claim goes with the worker
    assert launcher.wait_for_exit(groups[0], 10)
    assert runowner.run_owner(run) is None
    groups.append(launcher.launch_worker(run, SLEEPER))
    assert runowner.run_owner(run) == groups[1]


def test_two_workers_started_together_one_exits_at_once(runs_dir, data_dir, groups):
    run = tiny_run(runs_dir, data_dir)
    command = [sys.executable, "-m", "dtvg_engine.worker", str(run)]
    procs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        for _ in range(2)
    ]
    groups.extend(p.pid for p in procs)
    deadline = time.monotonic() + 60
    while all(p.poll() is None for p in procs):
        assert time.monotonic() < deadline, "neither worker gave way"
        time.sleep(0.05)
    loser = next(p for p in procs if p.poll() is not None)
    winner = next(p for p in procs if p is not loser)
    err = loser.stderr.read().decode()
    assert loser.returncode == 2 and err.count("\n") == 1 and "already has a worker" in err, err
    wait_for(lambda: starts(run) >= 1, WORKER_TIMEOUT, "the winner's run_started", run)
    time.sleep(1)
    assert [e["pid"] for e in events_of(run) if e["type"] == "run_started"] == [winner.pid]
    assert runowner.run_owner(run) == winner.pid


def test_two_resumes_racing_start_one_worker(runs_dir, data_dir, groups):
    run = stopped_run(runs_dir, data_dir)
    command = [DTVG, "run", "resume", run.name, "--detach", "--runs-dir", str(runs_dir)]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read().decode()) for p in procs]
    if runowner.read_pid(run):
        groups.append(runowner.read_pid(run))
    assert sorted(code for code, _ in results) == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "worker" in refused and "Traceback" not in refused
    wait_for(lambda: starts(run) >= 2, WORKER_TIMEOUT, "the resumed worker's run_started", run)
    time.sleep(1)
    assert starts(run) == 2  # the old segment and exactly one new worker


# --- 6. runs that never started are resumable and removable --------------------------------------------


def test_a_queued_run_can_be_removed_and_not_stopped(runs_dir, data_dir):
    run = tiny_run(runs_dir, data_dir)
    assert "not running" in assert_bad_input(dtvg("runs", "stop", run.name, "--runs-dir", runs_dir))
    removed = dtvg("runs", "rm", run.name, "--runs-dir", runs_dir)
    assert removed.returncode == 0, removed.stderr
    assert not run.exists()


def test_a_run_whose_dead_workers_pid_was_reused_is_not_stuck(runs_dir, data_dir):
    """Its last word is run_started with a pid that now belongs to an unrelated process."""
    unrelated = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        run = tiny_run(runs_dir, data_dir)
        emit(run, RunStarted(run_id=run.name, stage="stage1", method="pt", task="rte",
             pid=unrelated.pid, config={}))  # fmt: skip
        assert runstatus.summarize(run).status == "killed"  # no worker owns it, whatever the pid names now
        stop = assert_bad_input(dtvg("runs", "stop", run.name, "--runs-dir", runs_dir))
        assert stop == f"error: run {run.name} is not running (killed)"
        assert unrelated.poll() is None  # never signalled: it is not the run's worker
        removed = dtvg("runs", "rm", run.name, "--runs-dir", runs_dir)
        assert removed.returncode == 0, removed.stderr
    finally:
        unrelated.kill()
        unrelated.wait()


def test_status_rules_are_one_table():
    owner, none = 4242, None
    assert runactions.refusal("stop", "r", "running", owner) is None
    assert "not running" in runactions.refusal("stop", "r", "pending", none)
    for status in ("pending", "stopped", "killed", "failed", "running"):
        assert runactions.refusal("resume", "r", status, none) is None, status
        assert "stop it first" in runactions.refusal("resume", "r", status, owner)
    assert "completed" in runactions.refusal("resume", "r", "completed", none)
    for status in runstatus.STATUSES:
        assert runactions.refusal("rm", "r", status, none) is None
        assert "stop it first" in runactions.refusal("rm", "r", status, owner)


def test_ctrl_c_keeps_queued_runs_resumable(runs_dir, data_dir, groups):
    """Ctrl-C on a foreground two-task run: the live one stops, the queued one can be resumed."""
    cli = subprocess.Popen(
        [
            DTVG, "run", "stage1", "rte", "cb", "--model", "tiny-llama", "--prompt-length", "4",
            "--k-shot", "16", "--max-eval", "16", "--steps", "2000", "--eval-every", "500",
            "--batch-size", "4", "--max-input-tokens", "32", "--device", "cpu", "--jobs", "1",
            "--runs-dir", str(runs_dir), "--data-dir", str(data_dir),
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: len(runfolder.list_run_dirs(runs_dir)) == 2, 60, "both run folders")
        by_task = {runfolder.read_config(d)["task"]: d for d in runfolder.list_run_dirs(runs_dir)}
        first, second = by_task["rte"], by_task["cb"]  # launched in that order, one at a time
        wait_for(lambda: any(e["type"] == "step" for e in events_of(first)), WORKER_TIMEOUT, "a step", first)
        groups.append(runowner.read_pid(first))
        cli.send_signal(signal.SIGINT)
        _, err = cli.communicate(timeout=120)
    finally:
        cli.kill()
    assert cli.returncode == 1 and "Traceback" not in err, err
    assert "kept queued" in err and second.name in err
    assert runstatus.summarize(first).status == "stopped"
    assert runstatus.summarize(second).status == "pending" and runowner.run_owner(second) is None

    resumed = dtvg("run", "resume", second.name, "--detach", "--runs-dir", runs_dir)
    assert resumed.returncode == 0, resumed.stderr
    groups.append(runowner.read_pid(second))
    wait_for(lambda: starts(second) == 1, WORKER_TIMEOUT, "the queued run's worker", second)

    # 10. every file the runs wrote is readable by others (this umask: 022)
    for path in runs_dir.rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & 0o044 == 0o044, f"{path} is {stat.filemode(path.stat().st_mode)}"


# --- 10. run files respect the umask --------------------------------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, mode):
    import numpy as np
    from safetensors.numpy import save_file

    old = os.umask(umask)
    try:
        atomic.write_json_atomic(tmp_path / "a.json", {"a": 1})
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == mode
        with atomic.replacing(tmp_path / "b.safetensors") as tmp:  # safetensors writes a 0600 file itself
            save_file({"x": np.ones(2)}, str(tmp))
        assert stat.S_IMODE((tmp_path / "b.safetensors").stat().st_mode) == mode
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.safetensors"]


# --- 9. odd runs directories: one line, never a traceback -----------------------------------------------


@pytest.fixture
def read_only(runs_dir):
    """Make a folder read-only, also for root (chattr +i); undone afterwards."""
    made: list[Path] = []

    def make(folder: Path) -> None:
        if os.geteuid() != 0:
            folder.chmod(0o555)
        elif subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("cannot make a folder read-only for root here (no chattr +i)")
        made.append(folder)

    yield make
    for folder in made:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        folder.chmod(0o755)


def test_a_read_only_runs_dir_can_be_listed_and_shown(runs_dir, data_dir, read_only):
    run = tiny_run(runs_dir, data_dir)
    read_only(runs_dir)
    read_only(run)
    listed = dtvg("runs", "list", "--json", "--runs-dir", runs_dir)
    assert listed.returncode == 0, listed.stderr
    assert [d["run_id"] for d in json.loads(listed.stdout)] == [run.name]
    shown = dtvg("runs", "show", run.name, "--runs-dir", runs_dir)
    assert shown.returncode == 0, shown.stderr
    table = dtvg("runs", "list", "--runs-dir", runs_dir)
    assert table.returncode == 0, table.stderr
    assert sorted(p.name for p in runs_dir.iterdir()) == [run.name]  # nothing written, no lock file
    line = assert_bad_input(dtvg("runs", "tag", run.name, "x", "--runs-dir", runs_dir))
    assert run.name in line


def test_a_runs_dir_that_is_a_file_is_one_line(tmp_path):
    path = tmp_path / "runs"
    path.write_text("not a folder")
    for command in (
        ["runs", "list"],
        ["runs", "show", "x"],
        ["runs", "export", "--out", tmp_path / "x.json"],
    ):
        line = assert_bad_input(dtvg(*command, "--runs-dir", path))
        assert str(path) in line and "not a folder" in line


def test_a_history_json_that_is_a_folder_is_one_line(runs_dir, data_dir):
    tiny_run(runs_dir, data_dir)
    (runs_dir / "history.json").mkdir()
    line = assert_bad_input(dtvg("runs", "list", "--runs-dir", runs_dir))
    assert "history.json" in line and "folder" in line


def test_a_note_that_is_not_utf8_still_exports(runs_dir, data_dir, tmp_path):
    run = tiny_run(runs_dir, data_dir)
    noted = subprocess.run(
        [
            os.fsencode(DTVG),
            b"runs",
            b"note",
            run.name.encode(),
            b"caf\xe9 \xff",
            b"--runs-dir",
            os.fsencode(runs_dir),
        ],
        capture_output=True,
    )
    assert noted.returncode == 0, noted.stderr
    for out in (tmp_path / "runs.csv", tmp_path / "runs.json"):
        exported = dtvg("runs", "export", "--out", out, "--runs-dir", runs_dir)
        assert exported.returncode == 0, exported.stderr
    assert "caf\ufffd \ufffd" in (tmp_path / "runs.csv").read_text(encoding="utf-8")
    assert json.loads((tmp_path / "runs.json").read_text())[0]["note"] == "caf\ufffd \ufffd"
    listed = dtvg("runs", "list", "--runs-dir", runs_dir)
    assert listed.returncode == 0, listed.stderr


def test_a_meta_json_with_stray_bytes_keeps_its_tags_and_note(runs_dir, data_dir):
    run = tiny_run(runs_dir, data_dir)
    (run / runfolder.META).write_bytes(b'{"tags": ["paper"], "note": "lr 0.3 \xe9t\xe9"}')
    assert runmeta.read_meta(run) == {"tags": ["paper"], "note": "lr 0.3 \ufffdt\ufffd"}
    tagged = dtvg("runs", "tag", run.name, "best", "--runs-dir", runs_dir)
    assert tagged.returncode == 0, tagged.stderr
    assert runmeta.read_meta(run)["tags"] == ["paper", "best"]
