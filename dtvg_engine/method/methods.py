"""Stage-2 methods: how each one builds the prompt it tunes from the stage-1 vectors.

What the methods are: docs/architecture.md, 'Methods'.

What each method is lives in `method_registry`; this module turns a registry record into a tuner:
- grouped methods (`init="t_t"`: `dtvg` and its ablations) tune P_mix = P_init + α_t⊙T_t + Σ_{s∈S'} α_s⊙T_s
  (eq. 6), re-selecting the source group S' by their `group_rule` from the rescaled vectors at every
  forward pass, evaluation included, as the authors' code does (`GroupedPrompt`);
- baselines tune a plain soft prompt from the start their `init` names (`SoftPrompt`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dtvg_engine.config import Stage2Settings
from dtvg_engine.method import grouping, method_registry
from dtvg_engine.method.merge import ScaledTaskVectors
from dtvg_engine.runs.events import Group
from dtvg_engine.train.training import SoftPrompt, Tuner

Chooser = Callable[[Tensor, dict[str, Tensor]], grouping.GroupResult]


@dataclass(frozen=True)
class Transfer:
    """What a stage-2 run transfers between, as its config.json records it: the target, the sources,
    and the stage-1 vector (TPV) of each (the target's own too, for the methods that start from it)."""

    target: str
    sources: list[str]
    tpvs: dict[str, Tensor]


class GroupedPrompt(Tuner):
    """DTVG's prompt: eq. 6 over a source group chosen anew at every step (Algorithm 1)."""

    def __init__(self, vectors: ScaledTaskVectors, choose: Chooser, fixed: bool = False) -> None:
        super().__init__()
        self.vectors = vectors
        self.choose = choose
        """Picks the group from the rescaled, detached target and source vectors."""
        self.fixed = fixed
        """`fixed-group`: keep the group chosen at the first step."""
        self.group: list[str] | None = None
        """The current source group, in ranking order."""

    def step_prompt(self, step: int) -> tuple[Tensor, Group | None]:
        if not self.vectors.source_names:  # only-target: nothing to group
            self.group = []
            return self.vectors([]), None
        result = self.regroup()
        self.group = result.selected
        return self.vectors(self.group), result.event(step, self.vectors.mean_scales())

    def regroup(self) -> grouping.GroupResult:
        """The group for the current parameters (the kept one for `fixed-group` after its first step)."""
        target, sources = self.vectors.rescaled_target(), self.vectors.rescaled_sources()
        result = self.choose(target, sources)
        if self.fixed and self.group is not None:
            result = fixed_group(target, sources, result, self.group)
        return result

    def prompt(self) -> Tensor:
        """P_mix with the group re-chosen from the parameters as they are now: evaluation and the saved
        prompt see the group of the current scales and T_t, not the one of the step before the last
        optimizer update (the authors regroup on every forward pass)."""
        with torch.no_grad():
            group = self.regroup().selected if self.vectors.source_names else []
            return self.vectors(group).detach()

    def param_groups(self, settings: Stage2Settings) -> list[dict[str, Any]]:  # a stage-2 run's
        return self.vectors.param_groups(settings.lr, settings.source_scale_lr, settings.weight_decay)

    def snapshot(self) -> dict[str, Any]:
        return {"state": super().snapshot(), "group": list(self.group or [])}

    def restore(self, snapshot: dict[str, Any]) -> None:
        super().restore(snapshot["state"])
        self.group = list(snapshot["group"])


def fixed_group(
    target: Tensor, sources: dict[str, Tensor], now: grouping.GroupResult, group: list[str]
) -> grouping.GroupResult:
    """This step's ranking, with the group kept from step one and its TS/KC measured now."""
    members = [sources[name] for name in group]
    ts, kc = grouping.target_similarity(members, target), grouping.knowledge_consistency(members)
    return grouping.GroupResult(list(group), now.ranked, ts, kc)


def chooser(method: method_registry.Method, settings: Stage2Settings) -> Chooser:
    """A grouped method's `group_rule` as a call to `grouping.select_group`."""
    if method.group_rule == "all":
        return lambda target, sources: fixed_group(
            target, sources, grouping.select_group(target, sources, "ts-only"), list(sources)
        )
    variant = settings.grouping if method.group_rule == "setting" else method.group_rule
    lam = settings.lambda_
    return lambda target, sources: grouping.select_group(target, sources, variant, lam=lam)


def grouped_tuner(
    method: method_registry.Method, settings: Stage2Settings, transfer: Transfer, p_init: Tensor
) -> GroupedPrompt:
    """A grouped method's tuner: the target starts from its stage-1 vector T_t, every scale from one."""
    sources = {name: transfer.tpvs[name] for name in transfer.sources} if method.group_rule else {}
    vectors = ScaledTaskVectors(p_init, sources, transfer.target, target_init=transfer.tpvs[transfer.target])
    return GroupedPrompt(vectors, chooser(method, settings), fixed=method.frozen)


def baseline_init(
    method: method_registry.Method,
    settings: Stage2Settings,
    transfer: Transfer,
    p_init: Tensor,
    mix_prompt: Callable[[], Tensor] | None,
) -> tuple[Tensor, str]:
    """The starting prompt of a single-prompt baseline (its `init`), and a line saying how it was chosen."""
    if method.init == "p_init":
        return (
            p_init,
            f"{method.name}: prompt tuning from the shared initialization for {settings.steps} steps",
        )
    if method.init == "mix":
        if mix_prompt is None:
            raise ValueError("mix needs the trainer of the sources' prompt (stage2.mix_prompt)")
        return mix_prompt(), f"{method.name}: prompt tuning from the prompt trained on the sources' data"
    tpvs = transfer.tpvs
    ranked = rank_sources(method.ranking, transfer.sources, p_init, tpvs, transfer.target)
    ranking = ", ".join(f"{s} {v:.4g}" for s, v in ranked)
    if method.init == "top-1":
        best = ranked[0][0]
        return p_init + tpvs[
            best
        ], f"{method.name}: initialised from {best}'s prompt (similarities: {ranking})"
    chosen = [name for name, _ in ranked[: settings.top_k]]  # top-k-sum
    start = p_init + sum(tpvs[name] for name in chosen)
    return (
        start,
        f"{method.name}: P_init + Σ TPV of {', '.join(chosen)}, the top {len(chosen)} by eq. 2 ({ranking})",
    )


def rank_sources(
    ranking: str | None, sources: list[str], p_init: Tensor, tpvs: dict[str, Tensor], target: str
) -> list[tuple[str, float]]:
    """How a one-for-one method ranks the sources for a target, best first (ties by name).

    `spot` scores by SPoT's cosine of mean-pooled prompts P* = P_init + T, `eq2` by DTVG's eq. 2 on the
    task prompt vectors.
    """
    if ranking == "spot":
        anchor = (p_init + tpvs[target]).mean(0)
        scores = {
            s: float(torch.cosine_similarity((p_init + tpvs[s]).mean(0), anchor, dim=0)) for s in sources
        }
    else:
        scores = {s: grouping.sim(tpvs[s], tpvs[target]) for s in sources}
    return sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)


def build_tuner(
    settings: Stage2Settings,
    transfer: Transfer,
    p_init: Tensor,
    mix_prompt: Callable[[], Tensor] | None = None,
) -> tuple[Tuner, str]:
    """The tuner of the run's method (`settings.method`), and a line saying how it starts.

    `mix_prompt` trains the all-for-one prompt on the sources' data: `init="mix"` needs it.
    """
    method = method_registry.get(settings.method)
    if method.grouped:
        tuner = grouped_tuner(method, settings, transfer, p_init)
        if not method.group_rule:
            return tuner, f"{method.name}: P_init + α_t⊙T_t, no sources"
        rule = settings.grouping if method.group_rule == "setting" else method.group_rule
        return tuner, f"{method.name}: grouping ({rule}) every step over {', '.join(transfer.sources)}"
    init, note = baseline_init(method, settings, transfer, p_init, mix_prompt)
    return SoftPrompt(init), note
