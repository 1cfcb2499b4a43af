"""The source bank: shipped from real tiny stage-1 runs, listed, used by stage 2 and the pipeline, and
refused when a file or the shared init does not match."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_bad_input
from safetensors.torch import load_file, save_file

from dtvg_engine import config as configs
from dtvg_engine.errors import UserError
from dtvg_engine.method import bank
from dtvg_engine.runs.events import read_state
from dtvg_engine.runs.runfolder import EVENTS, INITS_DIR, TPV, create_run, list_run_dirs, read_config
from dtvg_engine.runs.runstatus import summarize
from dtvg_engine.studies import study, studyplan, studyprogress
from dtvg_engine.studies.studyfile import load_experiment
from dtvg_engine.worker import run_worker
from dtvg_tui.studydata import StudyData

REPO = Path(__file__).resolve().parents[1]
TINY = {"model": "tiny-llama", "prompt_length": 4, "max_eval": 16, "eval_every": 3}
SOURCES = ["mnli", "sst2"]
INIT = "tiny-llama-r4-s0"
CLI = ["--model", "tiny-llama", "--prompt-length", "4", "--max-eval", "16", "--eval-every", "3"]


def dtvg(*args: str, bank_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, bank.BANK_ENV: str(bank_dir), "COLUMNS": "200"}  # the table's rows whole
    command = [sys.executable, "-m", "dtvg_engine.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env)


def ship(*run_dirs: Path, bank_dir: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(REPO / "scripts" / "ship_bank.py"), *map(str, run_dirs)]
    return subprocess.run([*command, "--bank-dir", str(bank_dir)], capture_output=True, text=True)


def stage1(runs: Path, task: str, data_dir: Path, **extra) -> Path:
    config = configs.stage1_config(task, steps=3, data_dir=str(data_dir), **{**TINY, **extra})
    run_dir = create_run(runs, "stage1", task, config)
    assert run_worker(run_dir) == 0, (run_dir / EVENTS).read_text()[-2000:]
    return run_dir


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Path]:
    """Full-data stage-1 runs of the sources, in a runs directory of their own (the maintainer's)."""
    runs = tmp_path_factory.mktemp("maintainer")
    return {task: stage1(runs, task, data_dir) for task in SOURCES}


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory, sources: dict[str, Path]) -> Path:
    """A bank shipped from those runs with scripts/ship_bank.py."""
    bank_dir = tmp_path_factory.mktemp("bank")
    result = ship(*sources.values(), bank_dir=bank_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("shipped") == 2
    return bank_dir


def test_ship_writes_the_vectors_the_init_and_their_provenance(sources, shipped: Path) -> None:
    folder = shipped / INIT
    init_file = sources["mnli"].parent / INITS_DIR / f"{INIT}.safetensors"
    assert (folder / bank.INIT_FILE).read_bytes() == init_file.read_bytes()
    index = json.loads((folder / bank.INDEX).read_text())
    assert index["init"]["sha256"] == bank.sha256_of(init_file)
    assert sorted(index["vectors"]) == SOURCES
    for task, run_dir in sources.items():
        made, state = index["vectors"][task], read_state(run_dir / EVENTS)
        assert (folder / f"{task}.safetensors").read_bytes() == (run_dir / TPV).read_bytes()
        assert made["sha256"] == bank.sha256_of(run_dir / TPV)
        assert made["source_run"] == run_dir.name and made["steps"] == 3
        assert made["best_step"] == state.best.step
        assert made["validation"] == {"metrics": state.best.metrics, "primary": state.best.primary}
        assert made["test"]["primary"] == state.last_eval["test"].primary
        assert made["constant"] == read_config(run_dir)["split"]["test_constant"]
        assert made["config"]["lr"] == read_config(run_dir)["lr"] and made["config"]["k_shot"] is None
        assert made["config"]["data_dir"] == "data" and made["exported"]  # no local path is shipped
    assert [(v.init_id, v.task) for v in bank.entries(shipped)] == [(INIT, task) for task in SOURCES]


def test_ship_refuses_k_shot_unfinished_and_mixed_runs(sources, shipped: Path, data_dir: Path) -> None:
    runs = sources["mnli"].parent
    few = stage1(runs, "qnli", data_dir, k_shot=16)
    pending = create_run(runs, "stage1", "qnli", configs.stage1_config("qnli", **TINY))
    other = stage1(runs, "qnli", data_dir, init_seed=1)
    before = (shipped / INIT / bank.INDEX).read_text()
    assert "16-shot" in assert_bad_input(ship(few, bank_dir=shipped))
    assert "pending, not completed" in assert_bad_input(ship(pending, bank_dir=shipped))
    assert "different inits" in assert_bad_input(ship(sources["mnli"], other, bank_dir=shipped))
    assert (shipped / INIT / bank.INDEX).read_text() == before


def test_tpv_bank_lists_the_bank(shipped: Path, tmp_path: Path) -> None:
    listed = dtvg("tpv", "bank", "--json", bank_dir=shipped)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(row["init_id"], row["task"], row["steps"]) for row in rows] == [(INIT, t, 3) for t in SOURCES]
    assert all(isinstance(row["validation"]["primary"], float) for row in rows)
    table = dtvg("tpv", "bank", bank_dir=shipped)
    assert table.returncode == 0 and "mnli" in table.stdout and INIT in table.stdout
    empty = dtvg("tpv", "bank", bank_dir=tmp_path / "absent")
    assert empty.returncode == 0 and "the source bank is empty" in empty.stdout
    assert json.loads(dtvg("tpv", "bank", "--json", bank_dir=tmp_path).stdout) == []


def test_stage2_takes_bank_vectors_for_sources_without_a_local_run(
    shipped: Path, runs_dir: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dtvg_engine.train.stage2 import load_vectors

    monkeypatch.setenv(bank.BANK_ENV, str(shipped))
    target = stage1(runs_dir, "rte", data_dir, k_shot=16)  # its P_init is the bank's, copied
    local_init = runs_dir / INITS_DIR / f"{INIT}.safetensors"
    assert local_init.read_bytes() == (shipped / INIT / bank.INIT_FILE).read_bytes()
    args = ["run", "stage2", "--target", "rte", "--sources", ",".join(SOURCES), "--method", "dtvg"]
    common = [*CLI, "--steps", "3", "--k-shot", "16", "--data-dir", str(data_dir)]
    result = dtvg(*args, *common, "--runs-dir", str(runs_dir), bank_dir=shipped)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("from the source bank") == 2  # the CLI says so ...
    (run_dir,) = [r for r in list_run_dirs(runs_dir) if read_config(r)["stage"] == "stage2"]
    config = read_config(run_dir)
    assert config["stage1_runs"] == {"rte": target.name}
    assert config["bank_sources"] == {
        task: {"init_id": INIT, "sha256": bank.sha256_of(shipped / INIT / f"{task}.safetensors")}
        for task in SOURCES
    }
    logged = [json.loads(line).get("message", "") for line in (run_dir / EVENTS).read_text().splitlines()]
    assert (
        sum("stage-1 vector of" in m and "from the source bank" in m for m in logged) == 2
    )  # ... the log too
    vectors = load_vectors(config, configs.read_settings(config), INIT, runs_dir)
    for task in SOURCES:
        assert torch.equal(vectors[task], load_file(shipped / INIT / f"{task}.safetensors")["tpv"])
    assert read_state(run_dir / EVENTS).status == "completed"


def test_a_local_source_run_wins_over_the_bank(
    sources, shipped: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    monkeypatch.setenv(bank.BANK_ENV, str(shipped))
    runs = sources["mnli"].parent
    stage1(runs, "rte", data_dir, k_shot=16)
    config = configs.stage2_config("rte", SOURCES, "dtvg", runs, k_shot=16, **TINY)
    assert config["stage1_runs"]["mnli"] == sources["mnli"].name and "bank_sources" not in config
    banked = configs.stage2_config("rte", SOURCES, "dtvg", runs, bank_tasks=["mnli"], k_shot=16, **TINY)
    assert list(banked["bank_sources"]) == ["mnli"] and "mnli" not in banked["stage1_runs"]


def test_a_changed_or_truncated_bank_file_is_refused(
    shipped: Path, tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    damaged = tmp_path / "bank"
    shutil.copytree(shipped, damaged)
    vector = damaged / INIT / "mnli.safetensors"
    vector.write_bytes(vector.read_bytes()[:-7])
    runs = tmp_path / "runs"
    args = ["run", "stage2", "--target", "rte", "--sources", "mnli", "--method", "tpv-sum"]
    line = assert_bad_input(dtvg(*args, *CLI, "--runs-dir", str(runs), bank_dir=damaged))
    assert "mnli.safetensors is damaged (sha256" in line
    assert list_run_dirs(runs) == []
    monkeypatch.setenv(bank.BANK_ENV, str(damaged))
    with pytest.raises(UserError, match="damaged"):
        bank.load_vector(bank.find(INIT, "mnli"))
    (damaged / INIT / bank.INDEX).write_text("{not json")
    assert "bank.json is damaged" in assert_bad_input(dtvg("tpv", "bank", bank_dir=damaged))


def test_a_different_local_init_is_refused(
    shipped: Path, runs_dir: Path, data_dir: Path, llama, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dtvg_engine.train.prompts import shared_init

    monkeypatch.setenv(bank.BANK_ENV, str(shipped))
    local = runs_dir / INITS_DIR / f"{INIT}.safetensors"
    local.parent.mkdir()
    save_file({"prompt": torch.zeros(4, 64)}, local)
    args = ["run", "stage2", "--target", "rte", "--sources", "mnli", "--method", "tpv-sum"]
    line = assert_bad_input(dtvg(*args, *CLI, "--runs-dir", str(runs_dir), bank_dir=shipped))
    assert f"is not the source bank's init {INIT}" in line
    # stage 1 too, before any run folder exists (its worker would refuse that P_init anyway)
    args = ["run", "stage1", "rte", *CLI, "--steps", "3", "--data-dir", str(data_dir)]
    line = assert_bad_input(dtvg(*args, "--runs-dir", str(runs_dir), bank_dir=shipped))
    assert f"is not the source bank's init {INIT}" in line and list_run_dirs(runs_dir) == []
    with pytest.raises(UserError, match="not the source bank's init"):
        shared_init(runs_dir, llama, 4, 0)
    local.unlink()
    p_init, _ = shared_init(runs_dir, llama, 4, 0)  # absent: the bank's is copied, whatever we'd sample
    assert torch.equal(p_init, load_file(shipped / INIT / bank.INIT_FILE)["prompt"])


STUDY = """
name = "banked"
model = "tiny-llama"
prompt_length = 4
sources = ["mnli", "sst2"]
targets = ["rte"]
methods = ["dtvg"]
jobs = 1
[stage1]
steps = 3
max_eval = 16
eval_every = 3
[stage2]
steps = 3
max_eval = 16
eval_every = 3
k_shot = 16
"""


def test_pipeline_takes_bank_sources_and_bank_false_trains_them(
    shipped: Path, tmp_path: Path, runs_dir: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment = tmp_path / "banked.toml"
    experiment.write_text(STUDY)
    args = ["run", "pipeline", str(experiment), "--runs-dir", str(runs_dir), "--data-dir", str(data_dir)]
    result = dtvg(*args, bank_dir=shipped)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"from the source bank ({INIT}), not trained: mnli, sst2" in result.stdout
    configs_ = [read_config(r) for r in list_run_dirs(runs_dir)]
    assert [(c["stage"], c.get("task")) for c in configs_] == [("stage1", "rte"), ("stage2", None)]
    assert sorted(configs_[1]["bank_sources"]) == SOURCES
    monkeypatch.setenv(bank.BANK_ENV, str(shipped))
    spec = load_experiment(experiment)
    slots = studyprogress.fill(spec, study.Runs.read(runs_dir))  # the study view plans no source run either
    assert [(s.stage, s.task, s.state) for s in slots] == [
        ("stage1", "rte", "done"),
        ("stage2", "rte", "done"),
    ]
    table = tmp_path / "banked.json"
    report = dtvg(
        "runs",
        "report",
        str(experiment),
        "--runs-dir",
        str(runs_dir),
        "--json-out",
        str(table),
        bank_dir=shipped,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    assert report.stdout.count("source (bank)") == 2 and "| mnli |" in report.stdout  # rows, similarity
    shipped_scores = {v.task: (v.primary("test"), v.constant) for v in bank.entries(shipped)}
    bank_lines = [line for line in report.stdout.splitlines() if "source (bank)" in line]
    assert all(line.endswith(f"| {100 * shipped_scores[line.split()[1]][1]:.1f} |") for line in bank_lines)
    written = [r for r in json.loads(table.read_text())["stage1"] if r["role"] == "bank"]
    assert {r["task"]: (r["test"], r["constant"]) for r in written} == shipped_scores
    data = StudyData(spec, runs_dir)  # the study view lists them and compares their vectors too
    snapshot = data.load({r.name: summarize(r) for r in list_run_dirs(runs_dir)})
    assert [(row.task, row.role, row.steps) for row in snapshot.banked] == [
        (task, "source (bank)", 3) for task in SOURCES
    ]
    data.load_details(snapshot)
    assert snapshot.similarity is not None and snapshot.similarity[0] == [*SOURCES, "rte"]

    experiment.write_text("bank = false\n" + STUDY)
    result = dtvg(*args, bank_dir=shipped)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "from the source bank" not in result.stdout
    made = [read_config(r) for r in list_run_dirs(runs_dir)][2:]
    assert sorted((c["stage"], c.get("task")) for c in made) == [("stage1", t) for t in SOURCES] + [
        ("stage2", None)
    ]
    newest = [c for c in made if c["stage"] == "stage2"][0]
    assert "bank_sources" not in newest and sorted(newest["stage1_runs"]) == ["mnli", "rte", "sst2"]


def test_the_bank_setting_of_a_study_is_checked(tmp_path: Path) -> None:
    experiment = tmp_path / "bad.toml"
    experiment.write_text('bank = "yes"\n' + STUDY)
    with pytest.raises(UserError, match="bank must be true or false"):
        load_experiment(experiment)


def test_no_bank_is_no_bank(tmp_path: Path, runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(bank.BANK_ENV, str(tmp_path / "absent"))
    assert bank.entries() == [] and bank.find(INIT, "mnli") is None
    with pytest.raises(UserError, match="no finished stage-1 run of 'mnli'"):
        configs.stage2_config("rte", ["mnli"], "tpv-sum", runs_dir, **TINY)


def test_the_bank_listing_imports_no_ml_stack(shipped: Path) -> None:
    code = (
        "import json, sys, dtvg_engine.method.bank as b; b.entries(); print(json.dumps(sorted(sys.modules)))"
    )
    env = {**os.environ, bank.BANK_ENV: str(shipped)}
    loaded = set(json.loads(subprocess.check_output([sys.executable, "-c", code], env=env)))
    assert not loaded & {"torch", "numpy", "transformers", "peft", "datasets", "safetensors"}


def test_the_new_run_form_offers_bank_sources(
    shipped: Path, runs_dir: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dashboard's Stage 2 tab lists the bank's vectors beside the local runs of the same init and
    launches a run that takes them from the bank."""
    import asyncio
    import time

    from tui.helpers import kill_group

    from dtvg_tui.app import DtvgApp
    from dtvg_tui.screens.new_run import NewRunScreen

    monkeypatch.setenv(bank.BANK_ENV, str(shipped))
    target = stage1(runs_dir, "rte", data_dir, k_shot=16)  # the only local run: the target's own

    async def launch() -> None:
        app = DtvgApp(runs_dir, refresh_interval=0.2, follow_interval=0.1)
        async with app.run_test(size=(120, 60)) as pilot:
            await pilot.pause(0.5)
            await pilot.press("n")
            form = app.screen
            assert isinstance(form, NewRunScreen)
            form.query_one("#new-run-tabs").active = "tab-stage2"
            form.query_one("#s2-target").focus()  # (the form opens with the Stage 1 task list focused)
            await pilot.pause()
            assert form.query_one("#s2-init").value == ("tiny-llama", 4, 0)  # local and bank: one init
            form.query_one("#s2-target").value = "rte"
            await pilot.pause()
            sources = form.query_one("#s2-sources")
            assert [(str(o.prompt), o.value) for o in sources.options] == [
                ("mnli (bank)", "mnli"),
                ("sst2 (bank)", "sst2"),
            ]
            sources.select("mnli")
            settings = {"steps": "3", "k_shot": "16", "max_eval": "16", "data_dir": str(data_dir)}
            for field, value in settings.items():
                form.query_one(f"#s2-{field}").value = value
            await pilot.pause()
            await pilot.press("ctrl+l")
            await pilot.pause()
            assert not isinstance(app.screen, NewRunScreen), str(form.query_one("#new-run-error").render())

    asyncio.run(launch())
    (run_dir,) = [r for r in list_run_dirs(runs_dir) if read_config(r)["stage"] == "stage2"]
    config = read_config(run_dir)
    assert config["sources"] == ["mnli"] and config["stage1_runs"] == {"rte": target.name}
    assert config["bank_sources"] == {
        "mnli": {"init_id": INIT, "sha256": bank.sha256_of(shipped / INIT / "mnli.safetensors")}
    }
    try:
        deadline = time.monotonic() + 180
        while read_state(run_dir / EVENTS).status not in ("completed", "failed"):
            assert time.monotonic() < deadline, "the launched stage-2 worker did not finish in 180 s"
            time.sleep(0.5)
        log = (run_dir / "worker.log").read_text()
        assert read_state(run_dir / EVENTS).status == "completed", log[-2000:]
    finally:
        kill_group(int((run_dir / "worker.pid").read_text()))


def test_the_package_bank_holds_sources_that_learned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every vector shipped with the package cleared a constant answer by 10 points on its validation
    rows (the study's rule), and `dtvg demo` takes all its sources from them."""
    from importlib.resources import files

    monkeypatch.delenv(bank.BANK_ENV, raising=False)
    shipped = bank.entries()
    assert shipped, "the package ships no bank vectors"
    for vector in shipped:
        floor = vector.config["split"]["validation_constant"]
        assert vector.primary("validation") >= floor + 0.10, (
            vector.task,
            vector.primary("validation"),
            floor,
        )
        bank.verified(vector.path, vector.sha256)
    demo = load_experiment(Path(str(files("dtvg_engine") / "experiments" / "demo.toml")))
    assert list(studyplan.banked_sources(demo)) == list(demo.sources)  # the demo trains no source


def test_the_demo_tunes_a_target_where_the_study_measured_transfer_and_says_how_noisy_it_is():
    """`dtvg demo` ended with pt 60.0, dtvg 50.0 on rte, where the study found no transfer (issue 24): its
    target is one where dtvg beat pt on the study's mean and on most seeds, and it says how far one seed
    on its few test rows can be read, and where the comparison is."""
    from importlib.resources import files

    from dtvg_engine.cli.run import demo_caveat

    demo = load_experiment(Path(str(files("dtvg_engine") / "experiments" / "demo.toml")))
    assert demo.methods == ("pt", "dtvg") and len(demo.targets) == 1
    study = json.loads((Path(__file__).parents[1] / "benchmarks/results/transfer.json").read_text())
    scores = {row["method"]: row for row in study["rows"] if row["target"] == demo.targets[0]}
    pt, dtvg = scores["pt"], scores["dtvg"]
    assert dtvg["mean"] > pt["mean"] + 0.05
    assert sum(dtvg["by_seed"][seed] > pt["by_seed"][seed] for seed in pt["by_seed"]) > len(pt["by_seed"]) / 2
    caveat = demo_caveat(demo)
    assert "1 seed, 30 steps, 60 test rows" in caveat and "5.6 points" in caveat  # sqrt(.75 × .25 / 60)
    assert "noise" in caveat and "docs/results.md" in caveat
