"""Stage 2: tune the target task with a transfer method, starting from the stage-1 vectors."""

from __future__ import annotations

import os
import random
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dtvg_engine.config import Stage2Settings, describe_stage1_runs, stage1_settings
from dtvg_engine.method import bank, tpv
from dtvg_engine.method.methods import Transfer, build_tuner
from dtvg_engine.runs.atomic import replacing
from dtvg_engine.runs.events import Artifact, EventWriter, Log
from dtvg_engine.runs.runfolder import ADAPTER, CHECKPOINT, PROMPT, TPV
from dtvg_engine.runs.safefiles import make_dir, real_dir, regular_file
from dtvg_engine.train import metrics, tasks
from dtvg_engine.train.backbones import Backbone
from dtvg_engine.train.data import default_data_dir, load_splits
from dtvg_engine.train.export import export_adapter
from dtvg_engine.train.generation import fitted_scorer
from dtvg_engine.train.prompts import check_tpv_init, pin_init
from dtvg_engine.train.stage1 import prepare
from dtvg_engine.train.training import Outcome, SoftPrompt, batch_indices, evaluate, fit, linear_schedule

MIX_PROMPT = "mix_prompt.safetensors"
"""`mix`: the sources' trained prompt, inside the run's checkpoint folder (read back on resume)."""


def load_vectors(
    config: dict[str, Any], settings: Stage2Settings, init_id: str, runs_dir: Path
) -> dict[str, torch.Tensor]:
    """The stage-1 TPVs this run transfers from, refusing any made from another initialization: its
    stage-1 runs' and the source bank's (each file checked against the sha256 the config records)."""
    tpvs, metas = (
        {},
        [
            {
                "task": "this run",
                "init_id": init_id,
                "model": settings.model,
                "prompt_length": settings.prompt_length,
            }
        ],
    )
    for task, run_id in config["stage1_runs"].items():
        tpvs[task], meta = tpv.load_tpv(runs_dir / Path(run_id).name / TPV)
        check_tpv_init(runs_dir, meta)
        metas.append(meta)
    for task, shipped in (config.get("bank_sources") or {}).items():
        tpvs[task], meta = bank.load_vector(bank.named(task, shipped), shipped["sha256"])
        metas.append(meta)
    tpv.check_compatible(metas)
    return tpvs


def mix_prompt(
    backbone: Backbone,
    config: dict[str, Any],
    settings: Stage2Settings,
    p_init: torch.Tensor,
    run_dir: Path,
    events: EventWriter,
) -> torch.Tensor:
    """SPoT's all-for-one prompt: one prompt tuned on the union of the sources' training data.

    Each step draws one source with probability proportional to its training size (examples-proportional
    mixing) and a batch of it, for `mix_steps` steps (the sources' stage-1 budget unless set); every
    `eval_every` steps the prompt is scored on the sources' validation splits (the mean of their task
    scores) and the best one is kept, as each source's own stage-1 prompt was. The sources' splits are
    those of their stage-1 runs (or the source bank's record of them). The result is kept in the
    checkpoint folder, so a resumed run goes straight on to the target.
    """
    saved = run_dir / CHECKPOINT / MIX_PROMPT
    if real_dir(saved.parent) and os.path.lexists(saved):
        events.emit(Log(level="info", message=f"mix: the sources' prompt from {CHECKPOINT}/{MIX_PROMPT}"))
        return load_file(regular_file(saved))["prompt"]
    data_dir = settings.data_dir or default_data_dir()
    scorers, train, validation = {}, {}, {}
    for source in config["sources"]:
        made = stage1_settings(run_dir.parent, config, source)
        splits = load_splits(
            source, data_dir, seed=made["seed"], k_shot=made["k_shot"], max_eval=made["max_eval"]
        )
        rows = splits.train + splits.validation
        scorers[source] = fitted_scorer(backbone, tasks.get_task(source), settings, rows)
        train[source], cut = scorers[source].encode_counted(splits.train)
        validation[source], cut_too = scorers[source].encode_counted(splits.validation)
        limit, total = scorers[source].max_input_tokens, len(rows)
        message = f"mix: {source} inputs at most {limit} tokens, {cut + cut_too} of {total} cut"
        events.emit(Log(level="info", message=message))
    tuner = SoftPrompt(p_init).to(backbone.device)
    optimizer = torch.optim.AdamW(tuner.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps = settings.mix_steps
    warmup = max(1, round(settings.warmup_ratio * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(warmup, steps))
    rng = random.Random(settings.seed)
    names = list(train)
    best_score, best = None, tuner.prompt().clone()
    for step in range(1, steps + 1):
        source = rng.choices(names, weights=[len(train[n]) for n in names])[0]
        rows = [
            train[source][i]
            for i in batch_indices(len(train[source]), settings.batch_size, step, settings.seed)
        ]
        loss = scorers[source].loss(tuner.weight, scorers[source].collate(rows))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tuner.parameters(), settings.max_grad_norm)
        optimizer.step()
        schedule.step()
        if step % settings.eval_every == 0 or step == steps:
            by_source = {
                name: metrics.score(
                    scorers[name].task,
                    evaluate(
                        scorers[name],
                        tuner.prompt(),
                        validation[name],
                        settings.eval_batch_size,
                        settings.eval_order,
                    ),
                )
                for name in names
            }
            score = statistics.fmean(by_source.values())
            is_best = best_score is None or score > best_score
            if is_best:
                best_score, best = score, tuner.prompt().clone()
            scores = ", ".join(f"{name} {value:.3f}" for name, value in by_source.items())
            events.emit(
                Log(
                    level="info",
                    message=f"mix: source step {step}/{steps}, loss {loss.item():.4f}, validation "
                    f"{score:.4f} ({scores}){' best' if is_best else ''}",
                )
            )
    best = best.cpu()
    make_dir(saved.parent)
    with replacing(saved) as tmp:
        save_file({"prompt": best}, tmp)
    return best


def run(
    run_dir: Path,
    config: dict[str, Any],
    settings: Stage2Settings,
    events: EventWriter,
    stop_requested: Callable[[], bool],
) -> Outcome:
    """Transfer to the target by the run's method; `config`: the run's config.json, `settings`: its
    settings, typed."""
    target = tasks.get_task(config["target"])
    backbone, splits, p_init, init_id = prepare(run_dir, settings, events, target.name)
    pin_init(run_dir, init_id)
    tpvs = load_vectors(config, settings, init_id, run_dir.parent)
    for line in describe_stage1_runs(run_dir.parent, config):
        events.emit(Log(level="info", message=line))
    transfer = Transfer(config["target"], config["sources"], tpvs)
    tuner, note = build_tuner(
        settings, transfer, p_init, lambda: mix_prompt(backbone, config, settings, p_init, run_dir, events)
    )
    events.emit(Log(level="info", message=note))
    rows = splits.train + splits.validation + splits.test
    scorer = fitted_scorer(backbone, target, settings, rows)
    outcome = fit(run_dir, settings, tuner, scorer, splits, events, stop_requested)
    if outcome.status != "completed":
        return outcome
    final = tuner.prompt().cpu()
    with replacing(run_dir / PROMPT) as tmp:
        metadata = {"init_id": init_id, "task": target.name, "method": settings.method}
        save_file({"prompt": final}, tmp, metadata=metadata)
    events.emit(Artifact(kind="prompt", path=PROMPT))
    export_adapter(backbone, final, run_dir / ADAPTER)
    events.emit(Artifact(kind="adapter", path=ADAPTER))
    return outcome
