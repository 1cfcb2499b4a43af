"""Training speed of a `dtvg` stage-2 step (6 sources) against a plain `pt` step, measured in the same run.

Both tuners are built the way `dtvg_engine.train.stage2.run` builds them, with `methods.build_tuner` for
`dtvg` and for `pt` from the shared init P_init and the task prompt vectors (TPVs) of the
sources and the target. One step is exactly what `training.fit` does per step: `tuner.step_prompt(step)`
(for dtvg: rescale the vectors, rank the sources, choose the group, build P_mix and the `group` event's
fields), `LabelScorer.loss` (`TextGenerator.loss` for a generation task), the finite-loss check,
zero_grad, backward, gradient clipping, AdamW, the LambdaLR schedule, then the `group` event (dtvg
only) and the `step` event written to a real `EventWriter` on a temporary file.

The TPVs are not stage-1 results: they are P_init-sized seeded random tensors of realistic size (values
of stage-1 AdamW at lr 0.3, std 0.5, sharing a common direction so that the token-sum cosines are about
0.3 as between real TPVs, and most sources enter the group). The grouping cost does not depend on their
values, only the group size does (P_mix sums the selected sources), and that size is printed.

Both see the same real training batches of the target (`--task`, default RTE) in the same order.
Warmup steps are not timed; the timed steps run in interleaved blocks (pt/dtvg, then dtvg/pt, ...) so
machine noise hits both alike, and the median over blocks is reported. The last line printed is a JSON
object with the figures.

    python benchmarks/dtvg_overhead.py                       # smollm2-135m, 6 sources, batch 8, prompt 100
    python benchmarks/dtvg_overhead.py --task web_nlg        # a generation target
    python benchmarks/dtvg_overhead.py --model tiny-llama    # fast smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from dtvg_engine.config import Stage2Settings
from dtvg_engine.method.methods import Transfer, build_tuner
from dtvg_engine.runs.events import EventWriter, Step
from dtvg_engine.train.backbones import load_backbone
from dtvg_engine.train.data import load_splits
from dtvg_engine.train.generation import GenerationBatch
from dtvg_engine.train.prompts import shared_init
from dtvg_engine.train.scoring import Batch, LabelScorer
from dtvg_engine.train.tasks import get_task
from dtvg_engine.train.training import Tuner, batch_indices, linear_schedule

from common import (
    COUNTS,
    default_data_dir,
    inputs_note,
    parse_timing_args,
    setup,
    sync,
    task_scorer,
    timing_parser,
)

SOURCES = ("mnli", "qnli", "qqp", "sst2", "snli", "cola")
TPV_STD = 0.5
"""Element std of the synthetic TPVs (stage-1 AdamW at lr 0.3 moves every value by tenths to ones)."""
TPV_SHARED = 0.3
"""Share of the TPVs' variance in a common direction: token-sum cosines of about 0.3, as between real TPVs."""
PHASES = ("prompt", "forward", "backward", "update", "events")
LIGHT_PHASES = ("prompt", "update", "events")
"""The phases that do no model work: their dtvg - pt difference is the grouping and merging overhead."""


def synthetic_tpvs(p_init: torch.Tensor, names: Sequence[str], seed: int) -> dict[str, torch.Tensor]:
    """Seeded random TPVs shaped like P_init: a shared component plus a task's own noise, std TPV_STD."""
    generator = torch.Generator().manual_seed(seed)
    common = torch.randn(p_init.shape, generator=generator)
    return {
        name: TPV_STD
        * (
            math.sqrt(TPV_SHARED) * common
            + math.sqrt(1 - TPV_SHARED) * torch.randn(p_init.shape, generator=generator)
        )
        for name in names
    }


@dataclass
class Trainer:
    """One tuner with its optimizer, schedule and event file, stepped exactly as `training.fit` steps."""

    name: str
    tuner: Tuner
    scorer: LabelScorer
    settings: Stage2Settings
    events: EventWriter
    total_steps: int
    step: int = 0
    phases: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})
    group_sizes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tuner.to(self.scorer.backbone.device)
        groups = self.tuner.param_groups(self.settings)
        self.optimizer = torch.optim.AdamW(groups, weight_decay=self.settings.weight_decay)
        warmup = max(1, round(self.settings.warmup_ratio * self.total_steps))
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, linear_schedule(warmup, self.total_steps)
        )
        self.params = [p for g in groups for p in g["params"]]
        self.device = self.scorer.backbone.device

    def train_step(self, batch: Batch | GenerationBatch, record: bool) -> None:
        """The body of `training.fit`'s loop for one step (batch already collated), phase by phase."""
        self.step += 1
        step, batch_size = self.step, batch.input_ids.shape[0]
        t0 = time.perf_counter()
        started = t0
        prompt, group = self.tuner.step_prompt(step)
        t1 = time.perf_counter()
        loss = self.scorer.loss(prompt, batch)
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"{self.name}: loss became {loss.item()} at step {step}")
        t2 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sync(self.device)
        t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(self.params, self.settings.max_grad_norm)
        self.optimizer.step()
        self.schedule.step()
        speed = batch_size / (time.perf_counter() - started)
        sync(self.device)
        t4 = time.perf_counter()
        if group is not None:
            self.events.emit(group)
            self.group_sizes.append(len(group.selected))
        rates = {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
        self.events.emit(Step(step=step, loss=loss.item(), lr=rates, samples_per_s=speed))
        t5 = time.perf_counter()
        if record:
            for name, (a, b) in zip(PHASES, [(t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5)], strict=True):
                self.phases[name].append(b - a)


def time_grouping(trainer: Trainer, repeats: int) -> float:
    """Mean ms of `step_prompt` alone (grouping, P_mix and the event's fields) over `repeats` calls."""
    tuner = trainer.tuner
    started = time.perf_counter()
    for i in range(repeats):
        tuner.step_prompt(trainer.step + 1 + i)
    sync(trainer.device)
    return 1000 * (time.perf_counter() - started) / repeats


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = timing_parser(__doc__.split("\n\n")[0], steps=32, block=2)
    parser.add_argument("--sources", type=int, default=len(SOURCES), help=f"1..{len(SOURCES)} (default 6)")
    parser.add_argument("--k-shot", type=int, default=None, help="train rows to sample from (default all)")
    args = parse_timing_args(parser, argv, counts=("sources", *COUNTS))
    if args.sources > len(SOURCES):
        parser.error(f"--sources must be at most {len(SOURCES)} ({', '.join(SOURCES)})")
    if args.task in SOURCES[: args.sources]:
        parser.error(f"--task {args.task} is one of the sources; pick another target")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    say = setup(args)

    backbone = load_backbone(args.model, args.device)
    device = backbone.device
    task = get_task(args.task)
    scorer = task_scorer(backbone, task)
    data_dir = args.data_dir or default_data_dir()
    train_items = scorer.encode(load_splits(task.name, data_dir, seed=args.seed, k_shot=args.k_shot).train)
    blocks = -(-args.steps // args.block)
    total = args.warmup + blocks * args.block
    batches = [
        scorer.collate(
            [train_items[i] for i in batch_indices(len(train_items), args.batch_size, step, args.seed)]
        )
        for step in range(1, total + 1)
    ]
    widths = [b.input_ids.shape[1] for b in batches]
    sources = list(SOURCES[: args.sources])

    with tempfile.TemporaryDirectory(prefix="dtvg-overhead-") as tmp:
        p_init, _ = shared_init(Path(tmp) / "runs", backbone, args.prompt_length, 0)
        tpvs = synthetic_tpvs(p_init, [*sources, task.name], args.seed)
        settings = Stage2Settings(steps=total, batch_size=args.batch_size)
        transfer, trainers = Transfer(task.name, sources, tpvs), {}
        for method in ("pt", "dtvg"):
            tuner, note = build_tuner(replace(settings, method=method), transfer, p_init)
            events = EventWriter(Path(tmp) / f"{method}-events.jsonl")
            trainers[method] = Trainer(method, tuner, scorer, settings, events, total)
        pt, dtvg = trainers["pt"], trainers["dtvg"]

        say(
            f"{args.model} on {device}, {args.threads} threads | target {task.name} from {data_dir} "
            f"({len(train_items)} train rows) | batch {args.batch_size}, prompt {args.prompt_length}, "
            f"{inputs_note(scorer)} (batch widths {min(widths)}-{max(widths)})"
        )
        say(
            f"dtvg: {len(sources)} sources ({', '.join(sources)}), grouping {settings.grouping}; TPVs are "
            f"seeded random tensors, not stage-1 results (std {TPV_STD}, {TPV_SHARED:.0%} shared)"
        )

        for i in range(args.warmup):
            pt.train_step(batches[i], record=False)
            dtvg.train_step(batches[i], record=False)
        sync(device)

        def timed(trainer: Trainer, first: int) -> float:
            started = time.perf_counter()
            for i in range(first, first + args.block):
                trainer.train_step(batches[i], record=True)
            sync(device)
            return args.block * args.batch_size / (time.perf_counter() - started)

        rates: dict[str, list[float]] = {"pt": [], "dtvg": []}
        for k in range(blocks):
            first = args.warmup + k * args.block
            order = ["pt", "dtvg"] if k % 2 == 0 else ["dtvg", "pt"]  # ABBA: cancel slow drifts
            for name in order:
                rates[name].append(timed(trainers[name], first))
            say(
                f"block {k + 1:2d}/{blocks}: "
                f"pt {rates['pt'][-1]:7.2f}  dtvg {rates['dtvg'][-1]:7.2f} samples/s"
            )
        grouping_ms = time_grouping(dtvg, repeats=200)
        for trainer in trainers.values():
            trainer.events.close()

    pt_rate, dtvg_rate = statistics.median(rates["pt"]), statistics.median(rates["dtvg"])
    slowdown = pt_rate / dtvg_rate - 1
    paired = statistics.median(p / d - 1 for p, d in zip(rates["pt"], rates["dtvg"], strict=True))
    say(f"pt    {pt_rate:8.2f} samples/s  (median of {blocks} blocks of {args.block} steps)")
    say(f"dtvg  {dtvg_rate:8.2f} samples/s")
    say(f"slowdown  {slowdown:+.2%}  (pt/dtvg - 1 of the medians; median of paired blocks {paired:+.2%})")
    sizes = dtvg.group_sizes
    mean_size = statistics.mean(sizes)
    say(f"dtvg group size: {min(sizes)}-{max(sizes)} of {len(sources)} sources (mean {mean_size:.2f})")
    say(f"grouping alone (step_prompt: select group, P_mix, group event fields): {grouping_ms:.3f} ms/step")
    say("mean ms per step by phase (timed steps):")
    say(f"  {'phase':<9}{'pt':>10}{'dtvg':>10}{'dtvg-pt':>10}")
    for phase in PHASES:
        a = 1000 * statistics.mean(pt.phases[phase])
        b = 1000 * statistics.mean(dtvg.phases[phase])
        say(f"  {phase:<9}{a:10.3f}{b:10.3f}{b - a:+10.3f}")
    extra = sum(statistics.mean(dtvg.phases[p]) - statistics.mean(pt.phases[p]) for p in LIGHT_PHASES)
    pt_step = sum(statistics.mean(pt.phases[p]) for p in PHASES)
    say(
        f"dtvg-only work ({' + '.join(LIGHT_PHASES)} phases): {1000 * extra:+.3f} ms/step = "
        f"{extra / pt_step:+.2%} of a pt step ({1000 * pt_step:.1f} ms); forward/backward do the same "
        "model work in both, so this is the noise-free part of the slowdown"
    )
    result = {
        "model": args.model,
        "task": task.name,
        "sources": len(sources),
        "batch_size": args.batch_size,
        "prompt_length": args.prompt_length,
        "threads": args.threads,
        "dtvg_samples_per_s": round(dtvg_rate, 3),
        "pt_samples_per_s": round(pt_rate, 3),
        "slowdown": round(slowdown, 4),
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
