"""Generated run folders for the dashboard's scale benchmark (`benchmarks/tui_scale.py`) only.

Recording 500 runs, or a stage-2 run with a 100,000-line events file, with the real engine would take hours,
so the benchmark generates them: the folders follow docs/architecture.md ('Run folder', 'Event stream')
exactly (config.json, events.jsonl with one `step` and one `group` event per step, evals, run_finished), but
every number in them (losses, similarities, metrics, times) is made up. Only the sizes and the shape matter
for what the benchmark measures. Tests use the runs recorded with the real engine in `tests/fixtures/runs/`
instead.
Deterministic, standard library only.
"""

from __future__ import annotations

import json
import math
import random
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dtvg_engine.runs.runfolder import CONFIG, EVENTS

T0 = 1_750_000_000.0
"""2025-06-15 15:06:40 UTC: the start of every generated timeline."""

DEAD_PID = 2**22 + 12345
"""A pid beyond Linux's default pid_max: never alive."""


def write_run(runs_dir: Path, run_id: str, config: dict[str, Any], events: Iterable[dict[str, Any]]) -> Path:
    """Write one run folder; events need "type" and "time" (the "v" field is added)."""
    run_dir = Path(runs_dir) / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG).write_text(json.dumps({"run_id": run_id, **config}, indent=2))
    with open(run_dir / EVENTS, "w", encoding="utf-8") as f:
        for event in events:
            f.write(json.dumps({"v": 1, **event}, separators=(",", ":")) + "\n")
    return run_dir


def stage1_config(task: str, steps: int = 60, **extra: Any) -> dict[str, Any]:
    return {
        "stage": "stage1",
        "method": "pt",
        "task": task,
        "primary_metric": "accuracy",
        "model": "tiny-llama",
        "prompt_length": 8,
        "steps": steps,
        "batch_size": 4,
        "lr": 0.3,
        "eval_every": 20,
        "seed": 0,
        "init_seed": 0,
        **extra,
    }


def stage2_config(target: str, sources: list[str], method: str = "dtvg", steps: int = 60, **extra: Any):
    return {
        **stage1_config(target, steps),
        "stage": "stage2",
        "method": method,
        "target": target,
        "sources": sources,
        "task": None,
        "grouping": "greedy",
        "source_scale_lr": 0.4,
        **extra,
    }


def training_events(
    run_id: str,
    config: dict[str, Any],
    steps: int,
    t0: float = T0,
    seconds_per_step: float = 0.5,
    status: str | None = "completed",
    error: str | None = None,
    seed: int = 0,
    sources: list[str] | None = None,
    start_step: int = 1,
    pid: int = DEAD_PID,
) -> list[dict[str, Any]]:
    """A run's events: run_started, a step (and for stage 2 a group) per step, evals, run_finished."""
    rng = random.Random(seed)
    stage = config["stage"]
    head = {"run_id": run_id, "stage": stage, "method": config["method"], "pid": pid, "config": config}
    head["target" if stage == "stage2" else "task"] = config.get("target") or config.get("task")
    events = [{"type": "run_started", "time": t0, **head}]
    best = -1.0
    sims = {s: rng.uniform(-0.2, 0.8) for s in sources or []}
    t = t0
    eval_every = int(config.get("eval_every") or 20)
    for step in range(start_step, steps + 1):
        t = t0 + (step - start_step + 1) * seconds_per_step
        loss = 2.0 * math.exp(-step / max(steps / 3, 1)) + 0.3 + 0.05 * rng.random()
        events.append(
            {
                "type": "step",
                "time": t,
                "step": step,
                "loss": round(loss, 5),
                "lr": {"prompt": 0.3 * (1 - step / (steps + 1))},
                "samples_per_s": round(40 + 5 * rng.random(), 2),
            }
        )
        if sources:
            for s in sources:
                sims[s] = min(0.95, max(-0.5, sims[s] + rng.uniform(-0.03, 0.03)))
            ranked = sorted(sources, key=lambda s: -sims[s])
            selected: list[str] = []
            for s in ranked:
                if sims[s] >= 0 and (len(selected) < 2 or sims[s] > 0.4):
                    selected.append(s)
            ts = sum(sims[s] for s in selected) / len(selected) if selected else 0.0
            events.append(
                {
                    "type": "group",
                    "time": t,
                    "step": step,
                    "ranked": [{"task": s, "sim": round(sims[s], 4)} for s in ranked],
                    "selected": selected,
                    "ts": round(ts, 4),
                    "kc": round(ts * 0.7, 4),
                    "scales": {s: round(1 + 0.01 * step * sims[s], 4) for s in selected},
                }
            )
        if step % eval_every == 0 or step == steps:
            primary = round(min(0.95, 0.4 + 0.5 * step / steps + 0.02 * rng.random()), 4)
            is_best = primary > best
            best = max(best, primary)
            events.append(
                {
                    "type": "eval",
                    "time": t,
                    "step": step,
                    "split": "validation",
                    "metrics": {"accuracy": primary},
                    "primary": primary,
                    "best": is_best,
                }
            )
    if status is not None:
        events.append(
            {
                "type": "run_finished",
                "time": t + 1.0,
                "status": status,
                "summary": {"best_metric": best, "steps": steps, "seconds": t + 1.0 - t0},
                "error": error,
            }
        )
    return events


def make_scale_runs(runs_dir: Path, count: int = 500, big_lines: int = 100_000) -> Path:
    """`count` small finished runs plus one stage-2 run whose events file has ~`big_lines` lines.

    Returns the big run's folder.
    """
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    tasks = ("mnli", "qnli", "qqp", "sst2", "rte", "mrpc", "cola", "stsb", "boolq", "cb")
    for i in range(count - 1):
        task = tasks[i % len(tasks)]
        run_id = f"20250101-{i // 60:02d}{i % 60:02d}00-stage1-{task}-{i}"
        config = stage1_config(task, steps=20, eval_every=10)
        write_run(runs_dir, run_id, config, training_events(run_id, config, 20, T0 + 60 * i, seed=i))
    sources = list(tasks[:8])
    steps = big_lines // 2 - 10
    run_id = "20250102-000000-stage2-cb-dtvg"
    config = stage2_config("cb", sources, steps=steps, eval_every=1000)
    return write_run(
        runs_dir,
        run_id,
        config,
        training_events(run_id, config, steps, T0, seconds_per_step=0.05, sources=sources, seed=3),
    )


def write_tpv(path: Path, rows: int, dim: int, seed: int) -> None:
    """A stage-1 vector file in the safetensors layout (8-byte header length, JSON header, float32 data)."""
    rng = random.Random(seed)
    values = [rng.gauss(0.0, 0.1) for _ in range(rows * dim)]
    header = json.dumps({"tpv": {"dtype": "F32", "shape": [rows, dim], "data_offsets": [0, 4 * len(values)]}})
    blob = header.encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + struct.pack(f"<{len(values)}f", *values))


STUDY_SOURCES = ["mnli", "qnli", "qqp", "sst2", "snli"]
STUDY_TARGETS = ["rte", "cb", "mrpc", "wic"]
STUDY_METHODS = ["pt", "tpv-top1", "tpv-sum", "dtvg", "dtvg:prefix"]


def study_spec(seeds: int) -> dict[str, Any]:
    """The study `make_study_runs` fills: 4 targets × 5 methods × `seeds` seeds."""
    return {
        "name": "scale-study",
        "model": "tiny-llama",
        "prompt_length": 8,
        "sources": STUDY_SOURCES,
        "targets": STUDY_TARGETS,
        "methods": STUDY_METHODS,
        "seeds": list(range(seeds)),
        "jobs": 1,
        "stage1": {"steps": 20, "eval_every": 10},
        "stage2": {"steps": 30, "eval_every": 10, "k_shot": 16},
    }


def study_toml(spec: dict[str, Any]) -> str:
    """`spec` as a pipeline file."""

    def value(v: Any) -> str:
        return json.dumps(v)  # lists of strings and numbers are the same in TOML and JSON

    lines = [f"{key} = {value(spec[key])}" for key in spec if not isinstance(spec[key], dict)]
    for table in ("stage1", "stage2"):
        lines += [f"[{table}]", *(f"{key} = {value(v)}" for key, v in spec[table].items())]
    return "\n".join(lines) + "\n"


def make_study_runs(runs_dir: Path, seeds: int = 15) -> dict[str, Any]:
    """A finished study of 4 × 5 × `seeds` stage-2 runs (300 for 15 seeds) and its stage-1 runs: what a
    pipeline leaves (configs as it writes them, test evals, the constant floor, TPV files, a group event
    per step of the grouped runs). Returns its spec."""
    spec = study_spec(seeds)
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    split = {"test_constant": 0.5}
    stage1: dict[tuple[str, int | None], str] = {}
    planned = [(task, None) for task in STUDY_SOURCES]
    planned += [(task, seed) for task in STUDY_TARGETS for seed in spec["seeds"]]
    for i, (task, seed) in enumerate(planned):
        run_id = f"20250201-{i // 60:02d}{i % 60:02d}00-stage1-{task}" + ("" if seed is None else f"-s{seed}")
        extra = {"k_shot": 16, "seed": seed} if seed is not None else {}
        config = stage1_config(task, steps=20, eval_every=10, split=split, **extra)
        events = training_events(run_id, config, 20, T0 + 30 * i, seed=i)
        events.insert(-1, {**events[-2], "split": "test", "best": False})
        write_tpv(write_run(runs_dir, run_id, config, events) / "tpv.safetensors", 8, 64, i)
        stage1[task, seed] = run_id
    i = 0
    for target in STUDY_TARGETS:
        for method in STUDY_METHODS:
            name, _, rule = method.partition(":")
            grouped = name == "dtvg"
            for seed in spec["seeds"]:
                i += 1
                run_id = (
                    f"20250202-{i // 60:02d}{i % 60:02d}00-stage2-{target}-{method.replace(':', '-')}-s{seed}"
                )
                used = {s: stage1[s, None] for s in STUDY_SOURCES} if name != "pt" else {}
                used |= {target: stage1[target, seed]} if name != "pt" else {}
                config = stage2_config(
                    target,
                    STUDY_SOURCES if name != "pt" else [],
                    name,
                    steps=30,
                    eval_every=10,
                    k_shot=16,
                    seed=seed,
                    grouping=rule or "greedy",
                    stage1_runs=used,
                    split=split,
                )
                events = training_events(
                    run_id, config, 30, T0 + 60 * i, seed=i, sources=STUDY_SOURCES if grouped else None
                )
                events.insert(-1, {**events[-2], "split": "test", "best": False})
                write_run(runs_dir, run_id, config, events)
    return spec
