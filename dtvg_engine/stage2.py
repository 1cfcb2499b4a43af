"""Stage 2: tune the target task with a transfer method, starting from the stage-1 vectors."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from dtvg_engine import tasks, tpv
from dtvg_engine.backbones import Backbone
from dtvg_engine.data import default_data_dir, load_splits
from dtvg_engine.events import EventWriter
from dtvg_engine.export import export_adapter
from dtvg_engine.methods import build_tuner
from dtvg_engine.runfolder import ADAPTER, PROMPT, TPV, replacing
from dtvg_engine.scoring import LabelScorer
from dtvg_engine.stage1 import prepare
from dtvg_engine.training import Outcome, SoftPrompt, batch_indices, fit, linear_schedule


def load_vectors(config: dict[str, Any], init_id: str, runs_dir: Path) -> dict[str, torch.Tensor]:
    """The stage-1 TPVs this run transfers from, refusing any made from another initialization."""
    tpvs, metas = (
        {},
        [
            {
                "task": "this run",
                "init_id": init_id,
                "model": config["model"],
                "prompt_length": config["prompt_length"],
            }
        ],
    )
    for task, run_id in config["stage1_runs"].items():
        tpvs[task], meta = tpv.load_tpv(runs_dir / Path(run_id).name / TPV)
        metas.append(meta)
    tpv.check_compatible(metas)
    return tpvs


def mix_prompt(
    backbone: Backbone, config: dict[str, Any], p_init: torch.Tensor, events: EventWriter
) -> torch.Tensor:
    """SPoT's multi-task prompt: one prompt tuned on the union of the sources' training data.

    Each step draws one source task with probability proportional to its training size
    (examples-proportional mixing) and a batch of it; as many steps as the target run has.
    """
    data_dir = config.get("data_dir") or default_data_dir()
    scorers, items = {}, {}
    for source in config["sources"]:
        splits = load_splits(source, data_dir, seed=config["seed"], max_eval=config["max_eval"])
        scorers[source] = LabelScorer(backbone, tasks.get_task(source), config["max_input_tokens"])
        items[source] = scorers[source].encode(splits.train)
    tuner = SoftPrompt(p_init).to(backbone.device)
    optimizer = torch.optim.AdamW(tuner.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    steps = config["steps"]
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(max(1, steps // 10), steps))
    rng = random.Random(config["seed"])
    names = list(items)
    for step in range(1, steps + 1):
        source = rng.choices(names, weights=[len(items[n]) for n in names])[0]
        rows = [
            items[source][i]
            for i in batch_indices(len(items[source]), config["batch_size"], step, config["seed"])
        ]
        loss = scorers[source].loss(tuner.weight, scorers[source].collate(rows))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tuner.parameters(), config["max_grad_norm"])
        optimizer.step()
        schedule.step()
        if step % config["eval_every"] == 0 or step == steps:
            events.emit(
                "log",
                level="info",
                message=f"mix: source step {step}/{steps} ({source}) loss {loss.item():.4f}",
            )
    return tuner.prompt().cpu()


def run(
    run_dir: Path, config: dict[str, Any], events: EventWriter, stop_requested: Callable[[], bool]
) -> Outcome:
    target = tasks.get_task(config["target"])
    backbone, splits, p_init, init_id = prepare(run_dir, config, events, target.name)
    tpvs = load_vectors(config, init_id, run_dir.parent)
    method = config["method"]
    if method == "mix":
        tuner, note = (
            SoftPrompt(mix_prompt(backbone, config, p_init, events)),
            "mix: prompt tuned on the sources' data",
        )
    else:
        tuner, note = build_tuner(method, config, p_init, tpvs)
    events.emit("log", level="info", message=note)
    scorer = LabelScorer(backbone, target, config["max_input_tokens"])
    outcome = fit(run_dir, config, tuner, scorer, splits, events, stop_requested)
    if outcome.status != "completed":
        return outcome
    final = tuner.prompt().cpu()
    with replacing(run_dir / PROMPT) as tmp:
        metadata = {"init_id": init_id, "task": target.name, "method": method}
        save_file({"prompt": final}, tmp, metadata=metadata)
    events.emit("artifact", kind="prompt", path=PROMPT)
    export_adapter(backbone, final, run_dir / ADAPTER)
    events.emit("artifact", kind="adapter", path=ADAPTER)
    return outcome
