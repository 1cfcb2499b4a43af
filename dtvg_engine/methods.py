"""Stage-2 methods (DESIGN §7): how each one builds the prompt it tunes from the stage-1 vectors.

Two families:
- grouped methods (`dtvg` and its ablations) tune P_mix = P_init + α_t⊙T_t + Σ_{s∈S'} α_s⊙T_s (eq. 6),
  re-selecting the source group S' every step from the rescaled vectors (`GroupedPrompt`);
- baselines tune a plain soft prompt from an initialization chosen by the method (`SoftPrompt`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from dtvg_engine import grouping
from dtvg_engine.merge import ScaledTaskVectors
from dtvg_engine.training import SoftPrompt, Tuner

GROUPED = ("dtvg", "fixed-group", "only-target", "ts-only", "kc-only", "all-sources")
"""Methods that merge task vectors with learnable scales and log a group every step."""

Chooser = Callable[[Tensor, dict[str, Tensor]], grouping.GroupResult]


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

    def step_prompt(self, step: int) -> tuple[Tensor, dict[str, Any] | None]:
        if not self.vectors.source_names:  # only-target: nothing to group
            self.group = []
            return self.vectors([]), None
        target, sources = self.vectors.rescaled_target(), self.vectors.rescaled_sources()
        result = self.choose(target, sources)
        if self.fixed and self.group is not None:
            result = fixed_group(target, sources, result, self.group)
        self.group = result.selected
        event = {
            "ranked": [{"task": name, "sim": sim} for name, sim in result.ranked],
            "selected": list(result.selected),
            "ts": result.ts,
            "kc": result.kc,
            "scales": self.vectors.mean_scales(),
        }
        return self.vectors(self.group), event

    def prompt(self) -> Tensor:
        with torch.no_grad():
            return self.vectors(self.group or []).detach()

    def param_groups(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        return self.vectors.param_groups(config["lr"], config["source_scale_lr"], config["weight_decay"])

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


def chooser(method: str, config: dict[str, Any]) -> Chooser:
    """The group rule of a grouped method, as a call to `grouping.select_group`."""
    if method == "all-sources":
        return lambda target, sources: fixed_group(
            target, sources, grouping.select_group(target, sources, "ts-only"), list(sources)
        )
    variant = {"dtvg": config["grouping"], "fixed-group": config["grouping"]}.get(method, method)
    lam = config["lambda"]
    return lambda target, sources: grouping.select_group(target, sources, variant, lam=lam)


def grouped_tuner(
    method: str, config: dict[str, Any], p_init: Tensor, tpvs: dict[str, Tensor]
) -> GroupedPrompt:
    """A grouped method's tuner: the target starts from its stage-1 vector T_t, every scale from one."""
    target = config["target"]
    sources = {} if method == "only-target" else {name: tpvs[name] for name in config["sources"]}
    vectors = ScaledTaskVectors(p_init, sources, target, target_init=tpvs[target])
    return GroupedPrompt(vectors, chooser(method, config), fixed=method == "fixed-group")


def baseline_init(
    method: str, config: dict[str, Any], p_init: Tensor, tpvs: dict[str, Tensor]
) -> tuple[Tensor, str]:
    """The starting prompt of a single-prompt baseline, and a line saying how it was chosen."""
    sources = config["sources"]
    if method == "pt":
        return p_init, "pt: prompt tuning from the shared initialization"
    if method == "tpv-sum":
        return p_init + sum(tpvs[s] for s in sources), f"tpv-sum: P_init + Σ TPV of {', '.join(sources)}"
    ranked = rank_sources(method, sources, p_init, tpvs, config["target"])
    best = ranked[0][0]
    ranking = ", ".join(f"{s} {v:.4g}" for s, v in ranked)
    return p_init + tpvs[best], f"{method}: initialised from {best}'s prompt (similarities: {ranking})"


def rank_sources(
    method: str, sources: list[str], p_init: Tensor, tpvs: dict[str, Tensor], target: str
) -> list[tuple[str, float]]:
    """How a one-for-one method ranks the sources for a target, best first (ties by name).

    `spot` scores by SPoT's cosine of mean-pooled prompts P* = P_init + T, `tpv-top1` by DTVG's eq. 2 on
    the task prompt vectors.
    """
    if method == "spot":
        anchor = (p_init + tpvs[target]).mean(0)
        scores = {
            s: float(torch.cosine_similarity((p_init + tpvs[s]).mean(0), anchor, dim=0)) for s in sources
        }
    else:
        scores = {s: grouping.sim(tpvs[s], tpvs[target]) for s in sources}
    return sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)


def build_tuner(
    method: str, config: dict[str, Any], p_init: Tensor, tpvs: dict[str, Tensor]
) -> tuple[Tuner, str]:
    """The tuner of any stage-2 method except `mix` (which first trains on source data, see stage2)."""
    if method in GROUPED:
        return grouped_tuner(
            method, config, p_init, tpvs
        ), f"{method}: grouping every step over {config['sources']}"
    init, note = baseline_init(method, config, p_init, tpvs)
    return SoftPrompt(init), note
