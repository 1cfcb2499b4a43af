"""Stage 1 end to end through the `dtvg` command: real worker subprocesses, real task data, tiny models.

Covers the run folder, the event stream and the history index (docs/architecture.md), the exported peft
adapter, stop/kill and resume, a diverging run, and (marked slow) that the pretrained default model
actually learns.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tinydb import TinyDB

from dtvg_engine.method.tpv import load_tpv
from dtvg_engine.runs.events import EVENT_TYPES, read_events
from dtvg_engine.runs.runowner import pid_alive
from dtvg_engine.runs.runstatus import summarize
from dtvg_engine.train import metrics, tasks
from dtvg_engine.train.backbones import load_backbone
from dtvg_engine.train.data import load_splits
from dtvg_engine.train.scoring import LabelScorer
from dtvg_engine.train.training import linear_schedule

_VENV_DTVG = Path(sys.executable).with_name("dtvg")
DTVG = str(_VENV_DTVG) if _VENV_DTVG.exists() else "dtvg"

TINY = ["--prompt-length", "4", "--k-shot", "16", "--max-eval", "16", "--device", "cpu"]
PAIR_STEPS = 6


def dtvg(*args: object, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DTVG, *map(str, args)], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def events_of(run_dir: Path) -> list[dict]:
    """The run's events as written: one JSON object per line."""
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def of_type(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["type"] == kind]


def wait_for(predicate, timeout: float, what: str, run_dir: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            log = (run_dir / "worker.log").read_text()[-3000:] if run_dir else ""
            pytest.fail(f"timed out after {timeout}s waiting for {what}\n{log}")
        time.sleep(0.05)


def run_dirs_by_task(runs_dir: Path) -> dict[str, Path]:
    dirs = [p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))]
    return {json.loads((p / "config.json").read_text())["task"]: p for p in dirs}


# --- one real two-task stage-1 run, inspected by several tests -----------------------------------------


@pytest.fixture(scope="module")
def pair(tmp_path_factory, data_dir):
    """`dtvg run stage1 rte cb` on tiny-llama with two parallel workers."""
    runs_dir = tmp_path_factory.mktemp("pair") / "runs"
    result = dtvg(
        "run", "stage1", "rte", "cb", "--model", "tiny-llama", *TINY, "--steps", PAIR_STEPS,
        "--eval-every", 3, "--runs-dir", runs_dir, "--data-dir", data_dir, "--jobs", 2,
    )  # fmt: skip
    return result, runs_dir, run_dirs_by_task(runs_dir)


def test_stage1_run_completes_with_every_artifact(pair):
    result, _, runs = pair
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(runs) == ["cb", "rte"]
    for task, run_dir in runs.items():
        for name in ("config.json", "events.jsonl", "worker.log", "prompt.safetensors", "tpv.safetensors"):
            assert (run_dir / name).is_file(), f"{task}: {name} missing"
        assert (run_dir / "adapter" / "adapter_config.json").is_file()
        assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
        assert (run_dir / "checkpoint").is_dir()
        config = json.loads((run_dir / "config.json").read_text())
        assert config["run_id"] == run_dir.name
        assert run_dir.name.endswith(f"-stage1-{task}")
        assert config["task"] == task and config["model"] == "tiny-llama" and config["steps"] == PAIR_STEPS
        split = config["split"]
        assert split["task"] == task and split["k_shot"] == 16 and split["max_eval"] == 16
        assert split["sizes"] == {"train": 16, "validation": 16, "test": 16}
        assert "rule" in split and split["files"]["train"].endswith(f"{task}/train.jsonl")
        # both floors a constant answer reaches: on the test rows, and on the validation rows
        assert 0 < split["test_constant"] <= 1 and 0 < split["validation_constant"] <= 1
        assert "Traceback" not in (run_dir / "worker.log").read_text()


def test_tpv_file_has_key_and_metadata(pair):
    _, _, runs = pair
    for task, run_dir in runs.items():
        with safe_open(str(run_dir / "tpv.safetensors"), "pt") as f:
            assert list(f.keys()) == ["tpv"]
        vector, meta = load_tpv(run_dir / "tpv.safetensors")
        assert vector.shape == (4, 64)
        finished = of_type(events_of(run_dir), "run_finished")[-1]
        assert meta["task"] == task
        assert meta["model"] == "tiny-llama"
        assert meta["prompt_length"] == 4
        assert meta["init_id"] == "tiny-llama-r4-s0"
        assert meta["run_id"] == run_dir.name
        assert meta["best_metric"] == pytest.approx(finished["summary"]["best_metric"])
        assert meta["step"] == finished["summary"]["best_step"]
        assert meta["metric_name"] == tasks.get_task(task).primary


def test_runs_share_one_init_and_tpv_is_prompt_minus_init(pair):
    _, runs_dir, runs = pair
    inits = sorted((runs_dir / "_inits").iterdir())
    assert [p.name for p in inits] == ["tiny-llama-r4-s0.safetensors"]
    p_init = load_file(inits[0])["prompt"]
    init_ids = set()
    for run_dir in runs.values():
        prompt = load_file(run_dir / "prompt.safetensors")["prompt"]
        vector, meta = load_tpv(run_dir / "tpv.safetensors")
        init_ids.add(meta["init_id"])
        assert torch.equal(vector, prompt - p_init)
        assert vector.abs().sum() > 0  # the prompt was trained
    assert init_ids == {"tiny-llama-r4-s0"}


REQUIRED_FIELDS = {
    "run_started": {"run_id", "stage", "method", "task", "pid", "config"},
    "step": {"step", "loss", "lr", "samples_per_s"},
    "eval": {"step", "split", "metrics", "primary", "best"},
    "checkpoint": {"step", "path"},
    "artifact": {"kind", "path"},
    "log": {"level", "message"},
    "run_finished": {"status", "summary", "error"},
}
"""The fields every event of a stage-1 run carries besides v, type and time (docs/architecture.md,
'Event stream')."""


def test_event_stream_follows_the_contract(pair):
    _, _, runs = pair
    for task, run_dir in runs.items():
        lines = (run_dir / "events.jsonl").read_text().splitlines()
        events = [json.loads(line) for line in lines]  # every line is one complete JSON object
        assert len(read_events(run_dir / "events.jsonl")) == len(events)  # every line reads under the schema
        for e in events:
            assert e["v"] == 1 and e["type"] in EVENT_TYPES and isinstance(e["time"], float)
            assert e["type"] != "group"  # stage 1 has no grouping
            missing = REQUIRED_FIELDS[e["type"]] - set(e)
            assert not missing, (e["type"], missing)
        assert [e["time"] for e in events] == sorted(e["time"] for e in events)

        first, last = events[0], events[-1]
        assert first["type"] == "run_started"
        assert first["run_id"] == run_dir.name
        assert first["stage"] == "stage1" and first["method"] == "pt" and first["task"] == task
        assert isinstance(first["pid"], int) and first["config"]["task"] == task
        assert of_type(events, "run_started") == [first]

        steps = of_type(events, "step")
        assert [e["step"] for e in steps] == list(range(1, PAIR_STEPS + 1))
        for e in steps:
            assert math.isfinite(e["loss"]) and e["loss"] > 0
            assert isinstance(e["lr"], dict) and set(e["lr"]) == {"prompt"}
            assert e["samples_per_s"] > 0

        evals = of_type(events, "eval")
        validation = [e for e in evals if e["split"] == "validation"]
        assert [e["step"] for e in validation] == [3, 6]
        for e in evals:  # the score is the mean of the task's metrics (cb: accuracy and macro-F1)
            assert e["primary"] == pytest.approx(metrics.score(tasks.get_task(task), e["metrics"]))
            assert set(e["metrics"]) == set(tasks.get_task(task).metrics) and isinstance(e["best"], bool)
        assert validation[0]["best"] is True
        best = [e for e in validation if e["best"]][-1]
        assert best["primary"] == max(e["primary"] for e in validation)
        test = evals[-1]
        assert test["split"] == "test" and test["step"] == best["step"] and test["best"] is False
        assert [e for e in evals if e["split"] == "test"] == [test]

        lengths = [
            e["message"] for e in of_type(events, "log") if "cut in their longest text field" in e["message"]
        ]
        assert len(lengths) == 1  # the input length the run used, and how many examples it cut
        assert re.search(
            r"inputs: at most \d+ tokens \(holds 95% .*train \d+ of 16, validation \d+ of", lengths[0]
        )

        for e in of_type(events, "checkpoint"):
            assert (run_dir / e["path"]).is_file()
        artifacts = of_type(events, "artifact")
        assert sorted(e["kind"] for e in artifacts) == ["adapter", "prompt", "tpv"]
        for e in artifacts:
            assert (run_dir / e["path"]).exists()
        assert events.index(test) < events.index(artifacts[0])

        assert last["type"] == "run_finished" and of_type(events, "run_finished") == [last]
        assert last["status"] == "completed" and last["error"] is None
        summary = last["summary"]
        assert {"best_metric", "steps", "seconds"} <= set(summary)
        assert summary["best_metric"] == best["primary"]
        assert summary["steps"] == PAIR_STEPS
        assert 0 < summary["seconds"] < 600


def test_step_events_report_the_learning_rate_the_step_used(pair):
    """The `lr` of step s is the rate that updated the prompt at step s (warmup then linear decay).

    In particular the last step is trained with a positive rate; the rate after the last update is 0.
    """
    _, _, runs = pair
    config = json.loads((runs["rte"] / "config.json").read_text())
    warmup = max(1, round(config["warmup_ratio"] * PAIR_STEPS))
    factor = linear_schedule(warmup, PAIR_STEPS)
    expected = [config["lr"] * factor(s - 1) for s in range(1, PAIR_STEPS + 1)]
    got = [e["lr"]["prompt"] for e in of_type(events_of(runs["rte"]), "step")]
    assert got == pytest.approx(expected)
    assert got[-1] > 0


def test_history_lists_both_runs_as_completed(pair):
    _, runs_dir, runs = pair
    db = TinyDB(runs_dir / "history.json")  # read the worker-written index as it is, without rebuilding
    try:
        docs = {doc["run_id"]: doc for doc in db.table("runs").all()}
    finally:
        db.close()
    assert sorted(docs) == sorted(p.name for p in runs.values())
    for task, run_dir in runs.items():
        doc = docs[run_dir.name]
        best = of_type(events_of(run_dir), "run_finished")[-1]["summary"]["best_metric"]
        assert doc["status"] == "completed" and doc["task"] == task and doc["stage"] == "stage1"
        assert doc["model"] == "tiny-llama" and doc["step"] == PAIR_STEPS
        assert doc["best_metric"] == pytest.approx(best)
        assert doc["metric_name"] == tasks.get_task(task).primary


def test_k_shot_split_is_class_stratified(pair, data_dir):
    _, _, runs = pair
    for task_name, run_dir in runs.items():
        task = tasks.get_task(task_name)
        rows = [json.loads(line) for line in (data_dir / task_name / "train.jsonl").read_text().splitlines()]
        population = Counter(int(row[task.label_field]) for row in rows)
        counts = json.loads((run_dir / "config.json").read_text())["split"]["k_shot_counts"]
        assert sum(counts.values()) == 16
        assert {int(c) for c in counts} == set(population)
        total = sum(population.values())
        for cls, n in population.items():
            assert abs(counts[str(cls)] - 16 * n / total) < 1, (task_name, counts, population)


@pytest.fixture(scope="module")
def llama():
    return load_backbone("tiny-llama", "cpu")


def test_adapter_loads_with_peft_and_reproduces_our_logits(pair, llama, data_dir):
    from peft import PeftModel

    _, _, runs = pair
    run_dir = runs["rte"]
    prompt = load_file(run_dir / "prompt.safetensors")["prompt"]
    adapter_config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "PROMPT_TUNING" and adapter_config["task_type"] == "CAUSAL_LM"
    assert adapter_config["num_virtual_tokens"] == 4 and adapter_config["token_dim"] == 64

    base = load_backbone("tiny-llama", "cpu")  # a fresh copy: peft wraps it
    peft_model = PeftModel.from_pretrained(base.model, run_dir / "adapter")
    assert torch.equal(peft_model.prompt_encoder["default"].embedding.weight, prompt)

    scorer = LabelScorer(llama, tasks.get_task("rte"), max_input_tokens=64)
    rows = load_splits("rte", data_dir, seed=0, max_eval=16).validation[:6]
    batch = scorer.collate(scorer.encode(rows))
    with torch.no_grad():
        ours = scorer.answer_logits(prompt, batch)
        logits = peft_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert logits.shape[1] == 4 + batch.input_ids.shape[1]  # peft put the 4 virtual tokens first
    theirs = logits[torch.arange(len(rows)), 4 + batch.answer_index]
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


def test_adapter_names_its_base_model(pair):
    """The exported adapter records the base model (export.py's promise), not null."""
    _, _, runs = pair
    adapter_config = json.loads((runs["rte"] / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "tiny-llama"


# --- T5 -------------------------------------------------------------------------------------------------


def test_t5_stage1_run_exports_a_seq2seq_adapter(runs_dir, data_dir):
    from peft import PeftModel

    result = dtvg(
        "run", "stage1", "cb", "--model", "tiny-t5", *TINY, "--steps", 4, "--eval-every", 2,
        "--runs-dir", runs_dir, "--data-dir", data_dir,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = run_dirs_by_task(runs_dir)["cb"]
    events = events_of(run_dir)
    assert events[-1]["type"] == "run_finished" and events[-1]["status"] == "completed"
    assert len(of_type(events, "step")) == 4
    _, meta = load_tpv(run_dir / "tpv.safetensors")
    assert meta["init_id"] == "tiny-t5-r4-s0" and meta["model"] == "tiny-t5"
    adapter_config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["task_type"] == "SEQ_2_SEQ_LM"

    prompt = load_file(run_dir / "prompt.safetensors")["prompt"]
    backbone = load_backbone("tiny-t5", "cpu")
    scorer = LabelScorer(backbone, tasks.get_task("cb"), max_input_tokens=64)
    rows = load_splits("cb", data_dir, seed=0, max_eval=16).validation[:5]
    batch = scorer.collate(scorer.encode(rows))
    with torch.no_grad():
        ours = scorer.answer_logits(prompt, batch)
    peft_model = PeftModel.from_pretrained(load_backbone("tiny-t5", "cpu").model, run_dir / "adapter")
    assert torch.equal(peft_model.prompt_encoder["default"].embedding.weight, prompt)
    start = torch.full((len(rows), 1), backbone.model.config.decoder_start_token_id)
    with torch.no_grad():
        theirs = peft_model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, decoder_input_ids=start
        ).logits[:, 0]
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


# --- stop, kill and resume ----------------------------------------------------------------------------

LONG_STEPS = 120
LONG = ["--model", "tiny-llama", *TINY, "--batch-size", 4, "--max-input-tokens", 32, "--steps", LONG_STEPS]


def start_detached(runs_dir: Path, data_dir: Path, *extra: object) -> Path:
    result = dtvg(
        "run", "stage1", "rte", *LONG, *extra, "--runs-dir", runs_dir, "--data-dir", data_dir, "--detach"
    )
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.strip()
    assert "\n" not in run_id and (runs_dir / run_id / "config.json").is_file()
    return runs_dir / run_id


def segments(events: list[dict]) -> list[list[dict]]:
    """The events of each worker process, split at `run_started`."""
    parts: list[list[dict]] = []
    for event in events:
        if event["type"] == "run_started":
            parts.append([])
        parts[-1].append(event)
    return parts


def step_numbers(events: list[dict]) -> list[int]:
    return [e["step"] for e in of_type(events, "step")]


def test_stop_then_resume_continues_after_the_checkpoint(runs_dir, data_dir):
    run_dir = start_detached(runs_dir, data_dir, "--eval-every", 50)
    wait_for(lambda: len(of_type(events_of(run_dir), "step")) >= 3, 120, "3 steps", run_dir)
    stop = dtvg("runs", "stop", run_dir.name, "--runs-dir", runs_dir)
    assert stop.returncode == 0, stop.stderr
    wait_for(lambda: summarize(run_dir).status == "stopped", 60, "status stopped", run_dir)

    events = events_of(run_dir)
    finished = events[-1]
    assert finished["type"] == "run_finished" and finished["status"] == "stopped"
    assert finished["error"] is None
    stopped_at = of_type(events, "checkpoint")[-1]["step"]
    assert stopped_at == step_numbers(events)[-1] < LONG_STEPS  # checkpointed where it stopped
    assert (run_dir / "checkpoint" / "state.safetensors").is_file()
    assert not (run_dir / "tpv.safetensors").exists()
    wait_for(lambda: not pid_alive(events[0]["pid"]), 30, "the stopped worker to exit", run_dir)

    resumed = dtvg("run", "resume", run_dir.name, "--runs-dir", runs_dir)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert summarize(run_dir).status == "completed"

    events = events_of(run_dir)
    first, second = segments(events)
    assert step_numbers(first) == list(range(1, stopped_at + 1))
    assert step_numbers(second) == list(range(stopped_at + 1, LONG_STEPS + 1))  # nothing trained twice
    assert any(
        e["type"] == "log" and f"resumed from checkpoint at step {stopped_at}" in e["message"] for e in second
    )
    assert [e["status"] for e in of_type(events, "run_finished")] == ["stopped", "completed"]
    assert second[-1]["type"] == "run_finished" and second[-1]["summary"]["steps"] == LONG_STEPS
    assert (run_dir / "tpv.safetensors").is_file() and (run_dir / "adapter").is_dir()


def test_kill_then_resume_retrains_only_steps_after_the_last_checkpoint(runs_dir, data_dir):
    run_dir = start_detached(runs_dir, data_dir, "--eval-every", 10)

    def past_a_checkpoint() -> bool:
        events = events_of(run_dir)
        checkpoints = of_type(events, "checkpoint")
        return bool(checkpoints) and step_numbers(events)[-1] >= checkpoints[-1]["step"] + 2

    wait_for(past_a_checkpoint, 120, "a checkpoint and two more steps", run_dir)
    kill = dtvg("runs", "stop", run_dir.name, "--kill", "--runs-dir", runs_dir)
    assert kill.returncode == 0, kill.stderr
    wait_for(lambda: summarize(run_dir).status == "killed", 30, "status killed", run_dir)
    events = events_of(run_dir)
    assert not of_type(events, "run_finished")
    killed_losses = {e["step"]: e["loss"] for e in of_type(events, "step")}
    last_checkpoint = of_type(events, "checkpoint")[-1]["step"]
    last_step = max(killed_losses)
    assert last_step < LONG_STEPS

    resumed = dtvg("run", "resume", run_dir.name, "--runs-dir", runs_dir)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert summarize(run_dir).status == "completed"
    first, second = segments(events_of(run_dir))
    assert len(of_type(events_of(run_dir), "run_started")) == 2
    assert step_numbers(second) == list(range(last_checkpoint + 1, LONG_STEPS + 1))
    # The steps between the last checkpoint and the kill are trained again, from the same state on the
    # same batches: the same losses.
    again = {e["step"]: e["loss"] for e in of_type(second, "step") if e["step"] <= last_step}
    assert sorted(again) == list(range(last_checkpoint + 1, last_step + 1))
    for step, loss in again.items():
        assert loss == pytest.approx(killed_losses[step], abs=1e-6), step
    assert second[-1]["type"] == "run_finished" and second[-1]["status"] == "completed"


# --- a run that diverges ------------------------------------------------------------------------------


def test_nan_loss_fails_the_run_with_a_clear_message(runs_dir, data_dir):
    result = dtvg(
        "run", "stage1", "rte", "--model", "tiny-llama", *TINY, "--steps", 5, "--lr", "1e30",
        "--runs-dir", runs_dir, "--data-dir", data_dir,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    run_dir = run_dirs_by_task(runs_dir)["rte"]
    events = events_of(run_dir)
    finished = events[-1]
    assert finished["type"] == "run_finished" and finished["status"] == "failed"
    assert "loss" in finished["error"] and "nan" in finished["error"].lower()
    assert "--lr" in finished["error"]
    failed_step = len(of_type(events, "step")) + 1
    assert f"step {failed_step}" in finished["error"]  # the non-finite loss was caught, not stepped on
    assert all(math.isfinite(e["loss"]) for e in of_type(events, "step"))
    assert "loss" in result.stdout  # the CLI says why
    assert summarize(run_dir).status == "failed"
    assert not (run_dir / "tpv.safetensors").exists()
    assert "Traceback" not in (run_dir / "worker.log").read_text()


# --- the pretrained default learns (slow) -------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_loss_falls_on_sst2(runs_dir, data_dir):
    started = time.monotonic()
    result = dtvg(
        "run", "stage1", "sst2", "--model", "smollm2-135m", "--prompt-length", 8, "--steps", 12,
        "--batch-size", 8, "--lr", 0.3, "--k-shot", 96, "--max-eval", 16, "--eval-every", 12,
        "--device", "cpu", "--runs-dir", runs_dir, "--data-dir", data_dir,
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    losses = [e["loss"] for e in of_type(events_of(run_dirs_by_task(runs_dir)["sst2"]), "step")]
    assert len(losses) == 12
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    print(f"smollm2-135m sst2: first-4 mean {first:.3f}, last-4 mean {last:.3f}, "
          f"{time.monotonic() - started:.0f}s, losses {[round(x, 3) for x in losses]}")  # fmt: skip
    assert last < first
