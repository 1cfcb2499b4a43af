"""Stage 1: tune one soft prompt for one task from the shared P_init and save its task prompt vector."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from dtvg_engine.config import TrainingSettings
from dtvg_engine.errors import UserError
from dtvg_engine.method import tpv
from dtvg_engine.runs.atomic import replacing, write_json_atomic
from dtvg_engine.runs.events import Artifact, EventWriter, Log
from dtvg_engine.runs.runfolder import ADAPTER, PROMPT, TPV, read_config
from dtvg_engine.studies.studyresults import CONSTANT_KEY
from dtvg_engine.train import metrics, tasks
from dtvg_engine.train.backbones import load_backbone
from dtvg_engine.train.data import default_data_dir, load_splits
from dtvg_engine.train.export import export_adapter
from dtvg_engine.train.generation import fitted_scorer
from dtvg_engine.train.prompts import INIT_SHA256, pin_init, shared_init
from dtvg_engine.train.training import Outcome, SoftPrompt, fit

VALIDATION_CONSTANT_KEY = "validation_constant"
"""Key of a run's config `split` record: the best score of a constant answer on its validation rows, the
floor a setting or a source is judged against before any test score is read (experiments/bank.py)."""


def load_task_data(run_dir: Path, settings: TrainingSettings, events: EventWriter, task_name: str):
    """The task's seeded splits; the split actually made is recorded in config.json, with the best
    score a constant prediction gets on its test rows (the floor a study's table reads scores against)
    and on its validation rows (classification and regression only)."""
    data_dir = settings.data_dir or default_data_dir()
    splits = load_splits(
        task_name, data_dir, seed=settings.seed, k_shot=settings.k_shot, max_eval=settings.max_eval
    )
    task = tasks.get_task(task_name)
    floors = {
        key: metrics.constant_score(task, [tasks.label_of(task, row) for row in rows])
        for key, rows in ((CONSTANT_KEY, splits.test), (VALIDATION_CONSTANT_KEY, splits.validation))
        if not task.generation  # a constant text has no such floor
    }
    split = {**splits.split_info, **floors}
    write_json_atomic(run_dir / "config.json", {**read_config(run_dir), "split": split})
    sizes = splits.split_info["sizes"]
    events.emit(Log(level="info", message=f"{task_name}: {sizes} ({splits.split_info['rule']})"))
    return splits


def start_prompt(settings: TrainingSettings, p_init: torch.Tensor, init_id: str) -> torch.Tensor:
    """P_init, or a prompt from `dtvg tpv combine` made on the same init (`--init-prompt`).

    The TPV is still measured from P_init, so it stays comparable with every other task's vector.
    """
    path = settings.init_prompt
    if not path:
        return p_init
    try:
        with safe_open(path, framework="pt") as f:
            prompt, made_from = f.get_tensor("prompt"), (f.metadata() or {}).get("init_id")
    except (OSError, KeyError, SafetensorError) as exc:
        raise UserError(
            f"--init-prompt {path}: not a prompt file written by `dtvg tpv combine` ({exc})"
        ) from exc
    if made_from != init_id:
        raise UserError(f"--init-prompt {path} was made on init {made_from}, this run uses {init_id}")
    if prompt.shape != p_init.shape:
        raise UserError(
            f"--init-prompt {path} has shape {list(prompt.shape)}, init {init_id} has {list(p_init.shape)}"
        )
    return prompt


def prepare(run_dir: Path, settings: TrainingSettings, events: EventWriter, task_name: str):
    """What every run starts from: the backbone, the task's splits, and the shared P_init with its id."""
    backbone = load_backbone(settings.model, settings.device, settings.precision)
    events.emit(
        Log(
            level="info",
            message=f"{settings.model} on {backbone.device} in {str(backbone.dtype).removeprefix('torch.')} "
            f"(--precision {settings.precision}), {torch.get_num_threads()} torch threads",
        )
    )
    splits = load_task_data(run_dir, settings, events, task_name)
    p_init, init_id = shared_init(run_dir.parent, backbone, settings.prompt_length, settings.init_seed)
    return backbone, splits, p_init, init_id


def run(
    run_dir: Path,
    config: dict[str, Any],
    settings: TrainingSettings,
    events: EventWriter,
    stop_requested: Callable[[], bool],
) -> Outcome:
    """Tune the task's prompt; `config`: the run's config.json, `settings`: its settings, typed."""
    task = tasks.get_task(config["task"])
    backbone, splits, p_init, init_id = prepare(run_dir, settings, events, task.name)
    init_sha256 = pin_init(run_dir, init_id)
    tuner = SoftPrompt(start_prompt(settings, p_init, init_id))
    rows = splits.train + splits.validation + splits.test
    scorer = fitted_scorer(backbone, task, settings, rows)
    outcome = fit(run_dir, settings, tuner, scorer, splits, events, stop_requested)
    if outcome.status != "completed":
        return outcome

    tuned = tuner.prompt().cpu()
    with replacing(run_dir / PROMPT) as tmp:
        save_file({"prompt": tuned}, tmp, metadata={"init_id": init_id, "task": task.name})
    events.emit(Artifact(kind="prompt", path=PROMPT))
    metadata = {
        "task": task.name,
        "model": settings.model,
        "prompt_length": settings.prompt_length,
        "init_id": init_id,
        INIT_SHA256: init_sha256,
        "best_metric": outcome.best_metric,
        "metric_name": task.primary,
        "step": outcome.best_step,
        "run_id": config["run_id"],
    }
    tpv.save_tpv(run_dir / TPV, tpv.task_prompt_vector(tuned, p_init), metadata)
    events.emit(Artifact(kind="tpv", path=TPV))
    export_adapter(backbone, tuned, run_dir / ADAPTER)
    events.emit(Artifact(kind="adapter", path=ADAPTER))
    return outcome
