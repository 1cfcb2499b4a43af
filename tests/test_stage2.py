"""Stage 2 on the tiny model: every method runs, grouped ones log a group per step, bad input is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dtvg_engine import config as configs
from dtvg_engine.method import method_registry
from dtvg_engine.runs.runfolder import EVENTS, PROMPT, create_run, read_config
from dtvg_engine.runs.runstatus import summarize
from dtvg_engine.worker import run_worker

TINY = {"model": "tiny-llama", "prompt_length": 4, "k_shot": 16, "max_eval": 16, "eval_every": 3}
SOURCES = ["mnli", "qnli", "sst2"]


@pytest.fixture(scope="module")
def stage1_runs(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """Finished stage-1 runs of three sources and the target, shared by this module's tests."""
    runs = tmp_path_factory.mktemp("runs")
    for task in [*SOURCES, "rte"]:
        config = configs.stage1_config(task, steps=4, data_dir=str(data_dir), **TINY)
        assert run_worker(create_run(runs, "stage1", task, config)) == 0
    return runs


def run_stage2(runs: Path, data_dir: Path, method: str, **extra) -> tuple[Path, list[dict]]:
    settings = {"steps": 4, "data_dir": str(data_dir), **TINY, **extra}
    config = configs.stage2_config("rte", SOURCES, method, runs, **settings)
    run_dir = create_run(runs, "stage2", f"rte-{method.replace(':', '-')}", config)
    assert run_worker(run_dir) == 0, (run_dir / EVENTS).read_text()[-2000:]
    return run_dir, [json.loads(line) for line in (run_dir / EVENTS).read_text().splitlines()]


@pytest.fixture(scope="module")
def finished(stage1_runs: Path, data_dir: Path):
    """One finished run of a method at the module's settings, made once and shared by the tests."""
    made: dict[str, tuple[Path, list[dict]]] = {}

    def run_of(method: str) -> tuple[Path, list[dict]]:
        if method not in made:
            made[method] = run_stage2(stage1_runs, data_dir, method)
        return made[method]

    return run_of


def groups(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] == "group"]


@pytest.mark.parametrize("method", method_registry.NAMES)
def test_every_method_completes_and_exports_its_prompt(finished, method: str) -> None:
    run_dir, events = finished(method)
    assert summarize(run_dir).status == "completed"
    assert load_file(run_dir / PROMPT)["prompt"].shape == (4, 64)
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    steps = [e["step"] for e in events if e["type"] == "step"]
    fair = method_registry.get(method).fair_budget  # pt-fair also trains T_t's 4 stage-1 steps
    assert steps == list(range(1, (8 if fair else 4) + 1))
    grouped = method_registry.get(method).grouped and method_registry.get(method).group_rule
    assert [g["step"] for g in groups(events)] == (steps if grouped else [])


def test_dtvg_group_events_follow_the_schema(finished) -> None:
    _, events = finished("dtvg")
    for group in groups(events):
        sims = [r["sim"] for r in group["ranked"]]
        assert sims == sorted(sims, reverse=True)
        assert sorted(r["task"] for r in group["ranked"]) == sorted(SOURCES)
        ranked = {r["task"]: r["sim"] for r in group["ranked"]}
        assert all(ranked[name] >= 0 for name in group["selected"])
        assert set(group["scales"]) == {"rte", *SOURCES}
        assert isinstance(group["ts"], float) and isinstance(group["kc"], float)


def test_fixed_group_keeps_the_first_group_and_all_sources_takes_all(finished) -> None:
    _, fixed = finished("fixed-group")
    chosen = [tuple(g["selected"]) for g in groups(fixed)]
    assert len(set(chosen)) == 1
    _, everything = finished("all-sources")
    assert all(sorted(g["selected"]) == sorted(SOURCES) for g in groups(everything))


def test_source_scales_train_at_their_own_rate(stage1_runs: Path, data_dir: Path) -> None:
    _, events = run_stage2(stage1_runs, data_dir, "all-sources", source_scale_lr=0.0)
    assert all(set(g["scales"][s] for s in SOURCES) == {1.0} for g in groups(events))
    first = next(e for e in events if e["type"] == "step")
    assert first["lr"]["source_scales"] == 0.0 and first["lr"]["target"] > 0


def test_pt_fair_trains_t_ts_stage1_steps_on_top_of_stage2s(stage1_runs: Path, finished) -> None:
    """Grouped methods start from T_t, tuned for its stage-1 steps on these shots: pt-fair gets them too."""
    run_dir, events = finished("pt-fair")
    config = read_config(run_dir)
    own = read_config(stage1_runs / config["stage1_runs"]["rte"])
    assert (config["steps"], config["target_stage1_steps"]) == (own["steps"] + 4, own["steps"])
    assert own["seed"] == config["seed"] and config["sources"] == []
    assert max(e["step"] for e in events if e["type"] == "step") == own["steps"] + 4


def test_mix_trains_a_source_scale_budget_and_keeps_its_best_checkpoint(finished) -> None:
    """The all-for-one prompt trains as long as the sources did in stage 1 (it used to get the target
    run's steps), is validated on the sources' validation sets, and its best prompt is the start."""
    run_dir, events = finished("mix")
    assert read_config(run_dir)["mix_steps"] == 3 * 4  # three sources, 4 stage-1 steps each
    mix = [e["message"] for e in events if e["type"] == "log" and e["message"].startswith("mix: source")]
    assert [m.split(",")[0] for m in mix] == [f"mix: source step {s}/12" for s in (3, 6, 9, 12)]
    assert "best" in mix[0] and all(f"{s} " in mix[0] for s in SOURCES)  # each source's score
    assert (run_dir / "checkpoint" / "mix_prompt.safetensors").is_file()  # a resumed run reuses it


def test_a_grouped_method_entry_names_its_rule(finished) -> None:
    run_dir, events = finished("dtvg:prefix")
    config = read_config(run_dir)
    assert (config["method"], config["grouping"]) == ("dtvg", "prefix")
    assert any("grouping (prefix)" in e["message"] for e in events if e["type"] == "log")


def test_stage2_by_hand_takes_the_target_run_of_its_own_seed(stage1_runs: Path, data_dir: Path) -> None:
    """`dtvg run stage2` used to take the newest target run whatever its seed; it now takes the run with
    its own seed and split (T_t tuned on the same shots) and says which run it used."""
    (own,) = [r for r in stage1_runs.glob("*-stage1-rte") if read_config(r)["seed"] == 0]
    newer = configs.stage1_config("rte", steps=2, seed=1, data_dir=str(data_dir), **TINY)
    newer_dir = create_run(stage1_runs, "stage1", "rte-s1", newer)
    assert run_worker(newer_dir) == 0
    settings = {"steps": 4, "data_dir": str(data_dir), **TINY}
    assert (
        configs.stage2_config("rte", SOURCES, "dtvg", stage1_runs, **settings)["stage1_runs"]["rte"]
        == own.name
    )
    run_dir, events = run_stage2(stage1_runs, data_dir, "dtvg", seed=1)
    assert read_config(run_dir)["stage1_runs"]["rte"] == newer_dir.name
    logs = [e["message"] for e in events if e["type"] == "log"]
    said = f"stage-1 run of rte: {newer_dir.name} (seed 1, 16-shot), T_t with the same seed and split"
    assert any(line.startswith(said) for line in logs)
    other = configs.stage2_config("rte", SOURCES, "dtvg", stage1_runs, **{**settings, "seed": 2})
    assert other["stage1_runs"]["rte"] == newer_dir.name  # no run of seed 2: the newest, and it says so
    assert "T_t of another seed or split than this run's (seed 2, 16-shot)" in " ".join(
        configs.describe_stage1_runs(stage1_runs, other)
    )


def test_tpv_baselines_start_from_a_source_prompt(finished) -> None:
    _, events = finished("tpv-top1")
    note = next(e["message"] for e in events if e["type"] == "log" and e["message"].startswith("tpv-top1"))
    assert any(f"from {s}'s prompt" in note for s in SOURCES)


def dtvg_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dtvg_engine.cli", *args], capture_output=True, text=True)


def assert_refused(result: subprocess.CompletedProcess, words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--sources", "mnli,rte"], "also listed among its sources"),
        (["--sources", ""], "transfers from source tasks"),
        (["--sources", "mnli,cola"], "no finished stage-1 run of 'cola'"),
        (["--sources", "mnli", "--method", "magic"], "unknown method"),
        (["--sources", "mnli", "--prompt-length", "8"], "no finished stage-1 run"),
    ],
)
def test_stage2_bad_input_is_refused(stage1_runs: Path, data_dir: Path, args: list[str], words: str) -> None:
    before = sorted(p.name for p in stage1_runs.iterdir())
    common = ["--model", "tiny-llama", "--prompt-length", "4", "--data-dir", str(data_dir)]
    result = dtvg_cli("run", "stage2", "--target", "rte", *common, *args, "--runs-dir", str(stage1_runs))
    assert_refused(result, words)
    assert sorted(p.name for p in stage1_runs.iterdir()) == before


def test_tpv_of_another_init_is_refused(stage1_runs: Path, data_dir: Path, tmp_path: Path) -> None:
    other = configs.stage1_config("cola", steps=2, data_dir=str(data_dir), **{**TINY, "prompt_length": 2})
    run_dir = create_run(stage1_runs, "stage1", "cola", other)
    assert run_worker(run_dir) == 0
    result = dtvg_cli(
        "run",
        "stage2",
        "--target",
        "rte",
        "--sources",
        "mnli",
        "--tpv",
        run_dir.name,
        "--model",
        "tiny-llama",
        "--prompt-length",
        "4",
        "--runs-dir",
        str(stage1_runs),
    )
    assert_refused(result, "cannot be mixed")
    result = dtvg_cli("tpv", "sim", "mnli", run_dir.name, "--runs-dir", str(stage1_runs))
    assert_refused(result, "different initializations")


def test_tpv_sim_matrix_and_combine(stage1_runs: Path, tmp_path: Path) -> None:
    result = dtvg_cli("tpv", "sim", *SOURCES, "--json", "--runs-dir", str(stage1_runs))
    assert result.returncode == 0, result.stderr
    sim = json.loads(result.stdout)
    assert sim["tasks"] == SOURCES
    matrix = torch.tensor(sim["matrix"])
    assert torch.allclose(matrix, matrix.T) and bool((matrix.diagonal() > 0).all())
    out = tmp_path / "combo.safetensors"
    result = dtvg_cli(
        "tpv",
        "combine",
        "mnli + qnli - sst2",
        "--scale",
        "0.5",
        "--out",
        str(out),
        "--runs-dir",
        str(stage1_runs),
    )
    assert result.returncode == 0, result.stderr
    init = load_file(stage1_runs / "_inits" / "tiny-llama-r4-s0.safetensors")["prompt"]
    tpv = {s: load_file(next(stage1_runs.glob(f"*stage1-{s}")) / "tpv.safetensors")["tpv"] for s in SOURCES}
    expected = init + 0.5 * (tpv["mnli"] + tpv["qnli"] - tpv["sst2"])
    assert torch.allclose(load_file(out)["prompt"], expected, atol=1e-6)
