"""The training loop shared by every stage and method, readable in one sitting (nanoGPT style).

What is trained is a `Tuner`: a module that produces the soft prompt for each step (a plain prompt in
stage 1; a merged prompt with a freshly selected source group in stage 2). The loop owns the rest:
AdamW with linear warmup and decay, gradient clipping, evaluation every E steps (label-word ranking, or
greedy generation for a generation task, whose texts go to the run's predictions.jsonl), best checkpoint
by the task's score (the mean of its metrics), resumable checkpoints, a graceful stop, and the events.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from dtvg_engine.config import Stage2Settings, TrainingSettings
from dtvg_engine.runs.atomic import replacing
from dtvg_engine.runs.events import Checkpoint, Eval, EventWriter, Group, Log, Step
from dtvg_engine.runs.runfolder import CHECKPOINT, CHECKPOINT_FILE, CHECKPOINT_FORMAT, checkpoint_path
from dtvg_engine.runs.safefiles import make_dir, parse_json
from dtvg_engine.train import metrics
from dtvg_engine.train.data import Splits
from dtvg_engine.train.generation import write_predictions
from dtvg_engine.train.scoring import LabelScorer


class RunFailed(Exception):
    """The run cannot go on (e.g. the loss became NaN); the message is shown to the user as is."""


class Tuner(nn.Module):
    """What the loop trains. Subclasses define the prompt of each step and their parameter groups."""

    def step_prompt(self, step: int) -> tuple[Tensor, Group | None]:
        """The soft prompt [r, d] to train at `step`, and the source group it merges (or None)."""
        raise NotImplementedError

    def prompt(self) -> Tensor:
        """The prompt as it stands now, without side effects (used for evaluation and export)."""
        raise NotImplementedError

    def param_groups(self, settings: TrainingSettings) -> list[dict[str, Any]]:
        return [
            {
                "params": [p for p in self.parameters() if p.requires_grad],
                "lr": settings.lr,
                "name": "prompt",
            }
        ]

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to restore this tuner exactly (the best checkpoint keeps one)."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def restore(self, snapshot: dict[str, Any]) -> None:
        self.load_state_dict(snapshot)


class SoftPrompt(Tuner):
    """Stage 1 and plain prompt tuning: one trainable prompt, started from a given tensor."""

    def __init__(self, init: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(init.detach().clone().float())

    def step_prompt(self, step: int) -> tuple[Tensor, None]:
        return self.weight, None

    def prompt(self) -> Tensor:
        return self.weight.detach()


@dataclass
class Outcome:
    """How a call to `fit` ended."""

    status: str
    """"completed" or "stopped"."""
    step: int
    best_metric: float | None
    best_step: int | None
    test_metrics: dict[str, float] = field(default_factory=dict)


def linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warmup to the full rate over `warmup` steps, then linear decay to zero at `total`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Rows of training batch `step` (1-based): epochs of seeded shuffles, so a resumed run continues
    exactly where it stopped without saving any sampler state."""
    out: list[int] = []
    start = (step - 1) * batch_size
    for pos in range(start, start + batch_size):
        epoch, offset = divmod(pos, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out.append(int(order[offset]))
    return out


def predictions(
    scorer: LabelScorer, prompt: Tensor, items: Sequence, batch_size: int, order: str = "length"
) -> list[float] | list[str]:
    """`prompt`'s prediction for every encoded example, in the order given: a label id or score, or for a
    generation task (`TextGenerator`) the greedy text.

    With `order="length"` the batches are cut from the examples sorted longest first, so each is padded
    to about its own members' length instead of the longest of a random handful (with whole inputs,
    most of a data-order batch is padding); the predictions are put back in data order. Padding is
    masked, so an example's prediction does not depend on its batch. `order="data"` batches as given.
    """
    ranked = list(range(len(items)))
    if order == "length":
        ranked.sort(key=lambda i: len(items[i][0]), reverse=True)
    preds: list = [None] * len(items)
    for start in range(0, len(ranked), batch_size):
        chunk = ranked[start : start + batch_size]
        batch = scorer.collate([items[i] for i in chunk])
        for i, pred in zip(chunk, scorer.predict(prompt, batch), strict=True):
            preds[i] = pred
    return preds


def evaluate(
    scorer: LabelScorer, prompt: Tensor, items: Sequence, batch_size: int, order: str = "length"
) -> dict[str, float]:
    """The task's metrics for `prompt` on encoded examples (batched as `predictions` says)."""
    preds = predictions(scorer, prompt, items, batch_size, order)
    return metrics.compute(scorer.task, preds, scorer.golds(items))


def _rate_settings(settings: TrainingSettings, rates: dict[str, float]) -> str:
    """The learning-rate settings this run trains with, for the NaN-loss message: either may be the cause."""
    flags = [f"--lr (now {settings.lr})"]
    if isinstance(settings, Stage2Settings) and "source_scales" in rates:
        flags.append(f"--source-scale-lr (now {settings.source_scale_lr})")
    return " or ".join(flags)


# ----- checkpoints: tensors in a safetensors file, everything else as JSON in its header ------------------
# A checkpoint must load without running anything (a runs directory may come from someone else), so it
# holds no pickle: each tensor of the state is stored under a numbered key and replaced in the JSON tree
# by {"__tensor__": key}; tuples and int-keyed dicts (AdamW's state is keyed by parameter index) are tagged
# so they come back as they were and the optimizer resumes bit for bit.


def write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Save `state` (tensors, numbers, strings, None, and lists, tuples and dicts of them) atomically."""
    tensors: dict[str, Tensor] = {}
    tree = json.dumps(_to_plain(state, tensors))
    with replacing(path) as tmp:
        save_file(tensors, tmp, metadata={"format": CHECKPOINT_FORMAT, "state": tree})


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The state `write_checkpoint` saved (tensors on the CPU); `RunFailed` naming a damaged file."""
    try:
        with safe_open(path, framework="pt") as f:
            tensors = {key: f.get_tensor(key) for key in f.keys()}
            tree = parse_json((f.metadata() or {})["state"])
        return _from_plain(tree, tensors)
    except (OSError, SafetensorError, ValueError, KeyError, TypeError) as e:
        raise RunFailed(
            f"checkpoint {path} is damaged ({type(e).__name__}: {e}); "
            f"delete {path.parent} to resume from step 0"
        ) from e


def _to_plain(obj: Any, tensors: dict[str, Tensor]) -> Any:
    """`obj` as a JSON tree, its tensors moved (as CPU copies) into `tensors`."""
    if isinstance(obj, Tensor):
        key = str(len(tensors))
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key}
    if isinstance(obj, tuple):
        return {"__tuple__": [_to_plain(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_to_plain(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _to_plain(v, tensors) for k, v in obj.items()}
        if all(isinstance(k, int) for k in obj):
            return {"__int_keys__": {str(k): _to_plain(v, tensors) for k, v in obj.items()}}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}")


def _from_plain(tree: Any, tensors: dict[str, Tensor]) -> Any:
    """The inverse of `_to_plain`."""
    if isinstance(tree, list):
        return [_from_plain(v, tensors) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if "__tensor__" in tree:
        return tensors[tree["__tensor__"]]
    if "__tuple__" in tree:
        return tuple(_from_plain(v, tensors) for v in tree["__tuple__"])
    if "__int_keys__" in tree:
        return {int(k): _from_plain(v, tensors) for k, v in tree["__int_keys__"].items()}
    return {k: _from_plain(v, tensors) for k, v in tree.items()}


def fit(
    run_dir: Path,
    settings: TrainingSettings,
    tuner: Tuner,
    scorer: LabelScorer,
    splits: Splits,
    events: EventWriter,
    stop_requested: Callable[[], bool],
) -> Outcome:
    """Train `tuner` for `settings.steps` steps (resuming from the run's checkpoint if there is one)."""
    steps, batch_size, seed = settings.steps, settings.batch_size, settings.seed
    eval_batch, eval_order = settings.eval_batch_size, settings.eval_order
    task = scorer.task

    def assess(items: Sequence, split: str, step: int | None) -> dict[str, float]:
        """The metrics of the prompt as it stands on one split; a generation run keeps its texts."""
        preds = predictions(scorer, tuner.prompt(), items, eval_batch, eval_order)
        if task.generation:
            write_predictions(run_dir, split, step, items, preds)
        return metrics.compute(task, preds, scorer.golds(items))

    torch.manual_seed(seed)
    train_items, val_items, test_items, cut_note = scorer.encode_splits(splits)
    events.emit(Log(level="info", message=cut_note))
    tuner.to(scorer.backbone.device)

    groups = tuner.param_groups(settings)
    optimizer = torch.optim.AdamW(groups, weight_decay=settings.weight_decay)
    warmup = max(1, round(settings.warmup_ratio * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(warmup, steps))
    params = [p for g in groups for p in g["params"]]

    state = {"step": 0, "best_metric": None, "best_step": None, "best": tuner.snapshot()}
    checkpoint = checkpoint_path(run_dir)  # None, or a file whose framing was checked; UserError if bad
    if checkpoint is not None:
        saved = load_checkpoint(checkpoint)
        tuner.restore(saved["tuner"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        state = saved["state"]
        events.emit(Log(level="info", message=f"resumed from checkpoint at step {state['step']}"))

    def save_checkpoint(step: int) -> None:
        state["step"] = step
        path = run_dir / CHECKPOINT / CHECKPOINT_FILE
        make_dir(path.parent)  # a real folder of the run, not a link to one elsewhere
        write_checkpoint(
            path,
            {
                "tuner": tuner.snapshot(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "state": state,
            },
        )
        events.emit(Checkpoint(step=step, path=str(path.relative_to(run_dir))))

    step = state["step"]
    while step < steps:
        if stop_requested():
            save_checkpoint(step)
            return Outcome("stopped", step, state["best_metric"], state["best_step"])
        step += 1
        started = time.perf_counter()
        batch = scorer.collate(
            [train_items[i] for i in batch_indices(len(train_items), batch_size, step, seed)]
        )
        prompt, group = tuner.step_prompt(step)
        loss = scorer.loss(prompt, batch)
        rates = {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)}
        if not math.isfinite(loss.item()):
            raise RunFailed(
                f"loss became {loss.item()} at step {step}; lower {_rate_settings(settings, rates)}"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
        optimizer.step()
        schedule.step()
        speed = batch_size / (time.perf_counter() - started)
        if group is not None:
            events.emit(group)
        events.emit(Step(step=step, loss=loss.item(), lr=rates, samples_per_s=speed))

        if step % settings.eval_every == 0 or step == steps:
            scores = assess(val_items, "validation", step)
            value = metrics.score(task, scores)
            best = state["best_metric"] is None or value > state["best_metric"]
            if best:
                state.update(best_metric=value, best_step=step, best=tuner.snapshot())
            events.emit(Eval(step=step, split="validation", metrics=scores, primary=value, best=best))
            save_checkpoint(step)

    tuner.restore(state["best"])
    test = assess(test_items, "test", state["best_step"])
    value = metrics.score(task, test)
    events.emit(Eval(step=state["best_step"], split="test", metrics=test, primary=value, best=False))
    return Outcome("completed", step, state["best_metric"], state["best_step"], test)
