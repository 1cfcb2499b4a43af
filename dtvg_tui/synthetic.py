"""Synthetic run folders for the dashboard's tests and benchmark (deterministic, standard library only).

They follow DESIGN §3/§4 exactly (config.json, events.jsonl with explicit times, worker.log), but their
numbers are made up: real recorded runs live under `tests/fixtures/runs/`.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dtvg_engine.runfolder import CONFIG, EVENTS, LOG, TPV

T0 = 1_750_000_000.0
"""2025-06-15 15:06:40 UTC: the start of every synthetic timeline."""

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


def write_tpv(run_dir: Path, seed: int, shape: tuple[int, int] = (8, 16)) -> Path:
    """A made-up `[r, d]` task prompt vector as tpv.safetensors (numpy, no torch)."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    common = np.random.default_rng(99).normal(size=shape)
    path = Path(run_dir) / TPV
    save_file({"tpv": (common + rng.normal(size=shape)).astype(np.float32)}, str(path))
    return path


def make_demo_runs(runs_dir: Path) -> list[Path]:
    """Five finished runs: three stage-1 runs, a failed one and a stage-2 DTVG run with group events."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    made = []
    for i, task in enumerate(("mnli", "qnli", "sst2")):
        run_id = f"20250615-1500{i:02d}-stage1-{task}"
        config = stage1_config(task)
        made.append(
            write_run(runs_dir, run_id, config, training_events(run_id, config, 60, T0 + 100 * i, seed=i))
        )
        write_tpv(made[-1], seed=i)
    run_id = "20250615-150300-stage1-rte"
    config = stage1_config("rte")
    events = training_events(
        run_id, config, 25, T0 + 300, status="failed", error="RuntimeError: loss is NaN at step 25"
    )
    failed = write_run(runs_dir, run_id, config, events)
    (failed / LOG).write_text(
        "loading model tiny-llama\nstep 24 loss 0.81\nTraceback (most recent call last):\n"
        '  File "worker.py", line 1\nRuntimeError: loss is NaN at step 25\n'
    )
    made.append(failed)
    run_id = "20250615-150400-stage2-rte-dtvg"
    config = stage2_config("rte", ["mnli", "qnli", "sst2"])
    config["stage1_runs"] = {run.name.rsplit("-", 1)[1]: str(run.resolve()) for run in made[:3]}
    made.append(
        write_run(
            runs_dir,
            run_id,
            config,
            training_events(run_id, config, 60, T0 + 400, sources=["mnli", "qnli", "sst2"], seed=7),
        )
    )
    return made


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
