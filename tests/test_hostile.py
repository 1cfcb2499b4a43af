"""A runs directory made by someone hostile: links, devices, FIFOs and absurd JSON in its files.

A runs directory may be handed over by anyone, so what its files are is checked, not assumed: nothing
the tools write may land outside it through a link, no read may be endless or hang, and one damaged
run folder affects that run alone. Each case is the real CLI (or the dashboard) on real files.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import stat
from pathlib import Path

import pytest
from cli_helpers import assert_bad_input, dtvg

from dtvg_engine.config import stage1_config
from dtvg_engine.errors import UserError
from dtvg_engine.method import bank
from dtvg_engine.runs.events import EventWriter, RunFinished, RunStarted
from dtvg_engine.runs.runfolder import create_run
from dtvg_engine.runs.runmeta import read_meta
from dtvg_engine.runs.safefiles import FileRefused, parse_json

DEEP = "[" * 100_000 + "]" * 100_000
"""JSON nested 100,000 levels deep: valid, and far past what the parser's stack holds."""
MEMORY_CAP = 4 << 30
"""The address space a CLI call under test may use: an endless read fails, rather than fill the machine."""


def capped_dtvg(*args: object, timeout: float = 60) -> object:
    """`dtvg` whose address space is capped at `MEMORY_CAP`, with a short timeout (a hang fails)."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))

    return dtvg(*args, timeout=timeout, preexec_fn=cap)


def new_run(runs_dir: Path, task: str = "rte") -> Path:
    """A queued (never launched) stage-1 run of the tiny model."""
    config = stage1_config(task, model="tiny-llama", prompt_length=4, steps=2, device="cpu")
    return create_run(runs_dir, "stage1", task, config)


def finished_run(runs_dir: Path, task: str = "rte") -> Path:
    """A stage-1 run whose events say it started and completed."""
    run_dir = new_run(runs_dir, task)
    with EventWriter(run_dir / "events.jsonl") as events:
        events.emit(RunStarted(run_id=run_dir.name, stage="stage1", method="pt", pid=1, task=task, config={}))
        events.emit(RunFinished(status="completed", summary={}, error=None))
    return run_dir


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A file outside the runs directory that nothing may touch."""
    path = tmp_path / "outside" / "precious.txt"
    path.parent.mkdir()
    path.write_text("precious\n")
    return path


def device_node(path: Path) -> Path:
    """A character device like /dev/null at `path` (root only: skips otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("this container may not make device nodes")
    return path


def listed(result) -> list[str]:  # noqa: ANN001
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return [doc["run_id"] for doc in json.loads(result.stdout)]


# ----- 1. links inside a run folder never lead a write (or a read) out of it -------------------------------


def test_rm_does_not_truncate_the_target_of_a_linked_worker_lock(runs_dir: Path, outside: Path):
    run_dir = new_run(runs_dir)
    (run_dir / "worker.lock").symlink_to(outside)
    line = assert_bad_input(dtvg("runs", "rm", run_dir.name, "--runs-dir", runs_dir))
    assert "worker.lock is a symbolic link" in line
    assert outside.read_text() == "precious\n"


def test_tagging_creates_nothing_through_a_linked_meta_lock(runs_dir: Path, outside: Path):
    run_dir = new_run(runs_dir)
    target = outside.parent / "made-by-the-lock"
    (run_dir / "meta.json.lock").symlink_to(target)
    line = assert_bad_input(dtvg("runs", "tag", run_dir.name, "x", "--runs-dir", runs_dir))
    assert "meta.json.lock is a symbolic link" in line
    assert not os.path.lexists(target)


def test_show_refuses_a_linked_config_rather_than_print_an_outside_file(runs_dir: Path, tmp_path: Path):
    run_dir = new_run(runs_dir)
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({**json.loads((run_dir / "config.json").read_text()), "secret": "s3cr3t"}))
    (run_dir / "config.json").unlink()
    (run_dir / "config.json").symlink_to(secret)
    result = dtvg("runs", "show", run_dir.name, "--runs-dir", runs_dir)
    assert "config.json is a symbolic link" in assert_bad_input(result)
    assert "s3cr3t" not in result.stdout


@pytest.mark.parametrize("name", ["events.jsonl", "worker.log"])
def test_resume_writes_nothing_through_a_linked_events_file_or_log(runs_dir: Path, outside: Path, name: str):
    run_dir = new_run(runs_dir)
    (run_dir / name).symlink_to(outside)
    line = assert_bad_input(dtvg("run", "resume", run_dir.name, "--detach", "--runs-dir", runs_dir))
    assert f"{name} is a symbolic link" in line
    assert outside.read_text() == "precious\n"
    assert not (run_dir / "worker.pid").exists()  # no worker was started


def test_resume_refuses_a_checkpoint_folder_linked_elsewhere(runs_dir: Path, tmp_path: Path):
    run_dir = new_run(runs_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run_dir / "checkpoint").symlink_to(elsewhere, target_is_directory=True)
    line = assert_bad_input(dtvg("run", "resume", run_dir.name, "--detach", "--runs-dir", runs_dir))
    assert "checkpoint is a symbolic link, not a folder" in line
    assert not (run_dir / "worker.pid").exists() and list(elsewhere.iterdir()) == []


def test_adapter_export_writes_nothing_through_links(llama, runs_dir: Path, tmp_path: Path, outside: Path):
    import torch

    from dtvg_engine.train.export import export_adapter

    prompt = torch.zeros(4, llama.hidden_size)
    linked = runs_dir / "linked"
    linked.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (linked / "adapter").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(FileRefused, match="adapter is a symbolic link"):
        export_adapter(llama, prompt, linked / "adapter")
    assert list(elsewhere.iterdir()) == []

    holding = runs_dir / "holding" / "adapter"  # a real folder holding a link to an outside file
    holding.mkdir(parents=True)
    (holding / "adapter_config.json").symlink_to(outside)
    export_adapter(llama, prompt, holding)
    assert outside.read_text() == "precious\n"
    config = holding / "adapter_config.json"
    assert not config.is_symlink() and json.loads(config.read_text())["num_virtual_tokens"] == 4
    assert sorted(p.name for p in holding.parent.iterdir()) == ["adapter"]  # no temp folder left


def test_a_shared_init_is_never_written_through_a_linked_inits_folder(llama, runs_dir: Path, tmp_path: Path):
    from dtvg_engine.train.prompts import shared_init

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (runs_dir / "_inits").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(FileRefused, match="_inits is a symbolic link, not a folder"):
        shared_init(runs_dir, llama, 4, 0)
    assert list(elsewhere.iterdir()) == []


# ----- 2. an output path that is a device or a FIFO is not replaced -----------------------------------------


def test_export_out_leaves_a_fifo_in_place(runs_dir: Path, tmp_path: Path):
    fifo = tmp_path / "runs.json"
    os.mkfifo(fifo)
    line = assert_bad_input(dtvg("runs", "export", "--out", fifo, "--runs-dir", runs_dir, timeout=60))
    assert f"{fifo} exists and is a FIFO" in line
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_report_json_out_leaves_a_device_in_place(runs_dir: Path, tmp_path: Path):
    device = device_node(tmp_path / "null")
    experiment = Path(__file__).resolve().parents[1] / "experiments" / "transfer.toml"
    result = dtvg("runs", "report", experiment, "--json-out", device, "--runs-dir", runs_dir)
    assert f"{device} exists and is a device" in assert_bad_input(result)
    assert stat.S_ISCHR(os.lstat(device).st_mode)


def test_tpv_combine_out_leaves_a_device_in_place(runs_dir: Path, tmp_path: Path):
    device = device_node(tmp_path / "null")
    result = dtvg("tpv", "combine", "rte", "--out", device, "--runs-dir", runs_dir)
    assert f"{device} exists and is a device" in assert_bad_input(result)
    assert stat.S_ISCHR(os.lstat(device).st_mode)


# ----- 4. no read is endless or hangs ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["meta.json", "events.jsonl", "config.json", "worker.pid"])
@pytest.mark.parametrize("kind", ["/dev/zero", "fifo"])
def test_list_survives_a_run_file_that_is_dev_zero_or_a_fifo(runs_dir: Path, name: str, kind: str):
    good = finished_run(runs_dir, "rte")
    bad = finished_run(runs_dir, "sst2")
    (bad / name).unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(bad / name)
    else:
        (bad / name).symlink_to("/dev/zero")
    result = capped_dtvg("runs", "list", "--json", "--runs-dir", runs_dir)
    ids = listed(result)
    assert good.name in ids
    if name in ("events.jsonl", "config.json"):  # what a summary cannot do without: named, not listed
        assert bad.name not in ids
        assert f"warning: run {bad.name} is not listed: {bad / name} is" in result.stderr
    else:  # a note or a pid is something a run can do without
        assert bad.name in ids


@pytest.mark.parametrize("kind", ["/dev/zero", "fifo"])
def test_list_says_what_is_in_the_way_of_an_index_that_is_dev_zero_or_a_fifo(runs_dir: Path, kind: str):
    finished_run(runs_dir)
    index = runs_dir / "history.json"
    os.mkfifo(index) if kind == "fifo" else index.symlink_to("/dev/zero")
    result = capped_dtvg("runs", "list", "--json", "--runs-dir", runs_dir)
    what = "a FIFO" if kind == "fifo" else "a device"
    assert f"{index} exists and is {what}" in assert_bad_input(result)  # not read, not written over
    assert os.path.lexists(index) and not os.path.isfile(index)


def test_list_on_proc_ends(outside: Path):
    result = capped_dtvg("runs", "list", "--runs-dir", "/proc", timeout=60)
    assert result.returncode in (0, 2) and "Traceback" not in result.stderr


def test_list_does_not_truncate_the_target_of_a_linked_index_lock(runs_dir: Path, outside: Path):
    finished_run(runs_dir)
    (runs_dir / "history.json.lock").symlink_to(outside)
    result = dtvg("runs", "list", "--runs-dir", runs_dir)
    assert "history.json.lock is a symbolic link" in assert_bad_input(result)
    assert outside.read_text() == "precious\n"


# ----- 5. JSON nested 100,000 deep is one damaged file, nothing more ---------------------------------------


def test_deep_json_is_bad_json():
    with pytest.raises(ValueError, match="nested too deeply"):
        parse_json(DEEP)


def test_list_with_deep_json_in_one_run_lists_every_other(runs_dir: Path):
    good = finished_run(runs_dir, "rte")
    deep_meta = finished_run(runs_dir, "sst2")
    (deep_meta / "meta.json").write_text(DEEP)
    deep_config = finished_run(runs_dir, "qnli")
    (deep_config / "config.json").write_text(DEEP)
    result = capped_dtvg("runs", "list", "--json", "--runs-dir", runs_dir)
    assert listed(result) == [good.name, deep_meta.name]
    assert f"warning: run {deep_config.name} is not listed" in result.stderr
    assert read_meta(deep_meta) == {"tags": [], "note": ""}
    shown = dtvg("runs", "show", deep_config.name, "--runs-dir", runs_dir)
    assert "nested too deeply" in assert_bad_input(shown)


def test_list_rebuilds_a_deep_history_index(runs_dir: Path):
    good = finished_run(runs_dir)
    (runs_dir / "history.json").write_text(DEEP)
    assert listed(capped_dtvg("runs", "list", "--json", "--runs-dir", runs_dir)) == [good.name]


def test_a_deep_bank_index_is_a_damaged_bank(tmp_path: Path):
    folder = tmp_path / "bank" / "tiny-llama-r4-s0"
    folder.mkdir(parents=True)
    (folder / bank.INDEX).write_text(DEEP)
    with pytest.raises(UserError, match="nested too deeply"):
        bank.read_init("tiny-llama-r4-s0", tmp_path / "bank")


def test_dashboard_shows_the_good_runs_beside_deep_json(runs_dir: Path):
    from dtvg_tui.app import DtvgApp

    good = finished_run(runs_dir, "rte")
    deep_meta = finished_run(runs_dir, "sst2")
    (deep_meta / "meta.json").write_text(DEEP)
    (finished_run(runs_dir, "qnli") / "config.json").write_text(DEEP)
    linked = finished_run(runs_dir, "mnli") / "events.jsonl"
    linked.unlink()
    linked.symlink_to("/dev/zero")
    (runs_dir / "history.json").write_text(DEEP)

    async def shown() -> list[str]:
        app = DtvgApp(runs_dir, refresh_interval=0.2)
        async with app.run_test(size=(150, 40)) as pilot:
            for _ in range(100):
                await pilot.pause(0.1)
                if getattr(app.screen, "_scanned_once", False):
                    break
            await pilot.pause(0.3)
            return sorted(app.screen.shown)

    assert asyncio.run(shown()) == sorted([good.name, deep_meta.name])


# ----- 3. a shared init changed after runs tuned from it is refused ----------------------------------------

TINY = ["--model", "tiny-llama", "--prompt-length", "4", "--k-shot", "16", "--max-eval", "16"]
TINY += ["--steps", "2", "--eval-every", "1", "--device", "cpu"]


def test_a_changed_shared_init_is_refused_by_resume_and_by_every_reader(runs_dir: Path, data_dir: Path):
    from safetensors.torch import load_file, save_file

    from dtvg_engine.method.tpv import load_tpv
    from dtvg_engine.train.prompts import check_tpv_init, init_file, pin_init

    done = dtvg("run", "stage1", "rte", *TINY, "--runs-dir", runs_dir, "--data-dir", data_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    (run_dir,) = [p for p in runs_dir.iterdir() if p.name.endswith("stage1-rte")]
    _, meta = load_tpv(run_dir / "tpv.safetensors")
    init = init_file(runs_dir, meta["init_id"])
    recorded = json.loads((run_dir / "config.json").read_text())["init_sha256"]
    assert meta["init_sha256"] == recorded == bank.sha256_of(init)

    other = load_file(init)["prompt"] + 1.0  # another valid init of the same shape
    save_file(
        {"prompt": other}, init, metadata={"model": "tiny-llama", "prompt_length": "4", "init_seed": "0"}
    )
    with pytest.raises(UserError, match=f"the shared init {init} changed since run {run_dir.name}"):
        pin_init(run_dir, meta["init_id"])  # what a resumed worker does first
    result = dtvg(
        "tpv", "combine", "rte", "--out", runs_dir.parent / "combo.safetensors", "--runs-dir", runs_dir
    )
    assert "changed since the rte vector" in assert_bad_input(result)
    assert not (runs_dir.parent / "combo.safetensors").exists()
    check_tpv_init(runs_dir, {k: v for k, v in meta.items() if k != "init_sha256"})  # an older vector passes
