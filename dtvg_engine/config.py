"""Run configurations: the defaults and the checks shared by the CLI, the TUI form and the pipeline.

Standard library only (the TUI builds configs through this module). A config is a plain JSON-able
dict written to `config.json` before the worker starts; the worker reads nothing else.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dtvg_engine import tasks
from dtvg_engine.errors import UserError

TRAINING_DEFAULTS: dict[str, Any] = {
    "model": "smollm2-135m",
    "prompt_length": 100,
    "steps": 100,
    "batch_size": 8,
    "lr": 0.3,
    "weight_decay": 1e-5,
    "warmup_ratio": 0.1,
    "max_grad_norm": 1.0,
    "k_shot": None,
    "eval_every": 25,
    "eval_batch_size": 32,
    "max_eval": 200,
    "max_input_tokens": 64,
    "seed": 0,
    "init_seed": 0,
    "device": "auto",
    "data_dir": None,
}
"""Stage-1 settings and their defaults (lr 0.3 and weight decay 1e-5 as in the papers)."""

STAGE2_DEFAULTS: dict[str, Any] = {
    "method": "dtvg",
    "grouping": "greedy",
    "lambda": 1.0,
    "source_scale_lr": 0.4,
}
"""Extra stage-2 settings: the paper's few-shot two-speed rates are 0.3 (target) and 0.4 (source scales)."""

METHODS = (
    "dtvg",
    "fixed-group",
    "only-target",
    "ts-only",
    "kc-only",
    "all-sources",
    "pt",
    "spot",
    "tpv-top1",
    "tpv-sum",
    "mix",
)
"""Every stage-2 method of DESIGN §7."""


def check_training(settings: dict[str, Any]) -> None:
    """Refuse settings no run could use, with a one-line fix."""
    positive = ("prompt_length", "steps", "batch_size", "eval_every", "eval_batch_size", "max_input_tokens")
    for key in positive:
        if int(settings[key]) < 1:
            flag = "--" + key.replace("_", "-")
            raise UserError(f"{flag} must be at least 1 (got {settings[key]})")
    if settings["k_shot"] is not None and int(settings["k_shot"]) < 1:
        raise UserError(f"--k-shot must be at least 1 (got {settings['k_shot']})")
    if float(settings["lr"]) <= 0:
        raise UserError(f"--lr must be positive (got {settings['lr']})")


def stage1_config(task: str, runs_dir: str | Path, **overrides: Any) -> dict[str, Any]:
    """The resolved config of a stage-1 run of `task` (unknown keys are refused)."""
    unknown = set(overrides) - set(TRAINING_DEFAULTS)
    if unknown:
        raise UserError(f"unknown stage-1 setting(s): {', '.join(sorted(unknown))}")
    spec = tasks.get_task(task)
    if not spec.has_train:
        raise UserError(f"task {task!r} has no train split (evaluation-only); pick a task with training data")
    settings = {**TRAINING_DEFAULTS, **{k: v for k, v in overrides.items() if v is not None}}
    check_training(settings)
    return {
        "stage": "stage1",
        "method": "pt",
        "task": task,
        "primary_metric": spec.primary,
        "runs_dir": str(Path(runs_dir).resolve()),
        "created": time.time(),
        **settings,
    }
