"""The method registry: what every stage-2 method is, in one place (docs/architecture.md, 'Methods').

As peft registers each of its tuners once with everything the library needs to know about it, every
stage-2 method here is one `Method` record: whether it tunes DTVG's grouped prompt (eq. 6), whether it
transfers from source tasks, whether it needs the target's own stage-1 run T_t, how it chooses its
sources and where its prompt starts, and its step budget. The config checks, the pipeline's and the
report's planning, the worker (`methods.build_tuner` reads `group_rule` and `init`), the CLI's help and
the TUI's New-run form all read these records; nothing else lists methods.

A study (and `--method`) may name a grouped method with its grouping rule, `dtvg:prefix`: the same
method with `grouping = "prefix"`, so both rules can be rows of one table.

Standard library only: the terminal UI imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dtvg_engine.errors import UserError

GROUPINGS = ("greedy", "prefix", "exhaustive")
"""The rules a `group_rule="setting"` method takes from `--grouping` (see `grouping.select_group`):
Algorithm 2, the best-KC prefix of the authors' public code, and the exact maximiser of TS + λ·KC."""

INITS = ("t_t", "p_init", "top-1", "top-k-sum", "mix")
"""Where a method's tuned prompt starts: eq. 6 with the target's own T_t and every scale one; the
shared P_init; P_init + the TPV of the best-ranked source; P_init + the TPVs of the `top_k`
best-ranked sources; the prompt trained on the union of the sources' data."""


@dataclass(frozen=True)
class Method:
    """One stage-2 method: the facts every part of the engine and the dashboard reads."""

    name: str
    summary: str
    """What it tunes, in one line (the README's method table, `--method` help)."""
    init: str
    """One of INITS."""
    group_rule: str | None = None
    """Grouped methods (`init="t_t"`): how the source group S' is chosen at every step — "setting" (the
    run's `grouping`), a `grouping.select_group` variant ("ts-only", "kc-only"), "all" (every source),
    or None (no sources)."""
    frozen: bool = False
    """The group chosen at the first step is kept for the whole run (`fixed-group`)."""
    uses_sources: bool = True
    """Transfers from source tasks, so an empty source list is refused."""
    needs_target_run: bool = False
    """Needs the target's own stage-1 run T_t: it starts from it, ranks sources against it, or takes
    its budget from it."""
    ranking: str | None = None
    """How sources are ranked for the start: "eq2" (DTVG eq. 2 on the TPVs) or "spot" (SPoT's cosine
    of mean-pooled prompts)."""
    fair_budget: bool = False
    """Trains T_t's stage-1 steps plus the stage-2 steps, so it sees the target data as long as a method
    that starts from T_t (`steps` then holds the total, `target_stage1_steps` T_t's share)."""

    @property
    def grouped(self) -> bool:
        """Tunes P_mix = P_init + α_t⊙T_t + Σ α_s⊙T_s (eq. 6) with learnable token-level scales."""
        return self.init == "t_t"

    @property
    def rules(self) -> tuple[str, ...]:
        """The grouping rules that may follow its name after a colon (`dtvg:prefix`)."""
        return GROUPINGS if self.group_rule == "setting" else ()

    @property
    def tunes_as_stage1(self) -> bool:
        """Plain prompt tuning of the target from P_init, as stage 1 tunes it: at the settings of the
        target's own stage-1 run T_t, a run of this method is that run (a study plans it once)."""
        return self.init == "p_init" and not self.uses_sources and not self.fair_budget


def _registry(*methods: Method) -> dict[str, Method]:
    return {method.name: method for method in methods}


METHODS: dict[str, Method] = _registry(
    # --- DTVG and its ablations: eq. 6 from T_t, the group re-chosen at every step (and evaluation)
    Method(
        "dtvg",
        "P_mix with the group re-chosen every step by `--grouping`: greedy (Algorithm 2, default), "
        "prefix (best-KC prefix of the ranking, the authors' public code), exhaustive (best TS + λ·KC)",
        init="t_t",
        group_rule="setting",
        needs_target_run=True,
    ),
    Method(
        "fixed-group",
        "P_mix with the group chosen at step 1 (by `--grouping`), then frozen (ablation)",
        init="t_t",
        group_rule="setting",
        frozen=True,
        needs_target_run=True,
    ),
    Method(
        "only-target",
        "P_init + α_t⊙T_t, no sources (ablation)",
        init="t_t",
        uses_sources=False,
        needs_target_run=True,
    ),
    Method(
        "ts-only",
        "P_mix with every source whose sim ≥ 0 (ablation: no KC)",
        init="t_t",
        group_rule="ts-only",
        needs_target_run=True,
    ),
    Method(
        "kc-only",
        "P_mix with the subset of all sources of highest KC, none when no subset's KC > 0 (ablation: no TS)",
        init="t_t",
        group_rule="kc-only",
        needs_target_run=True,
    ),
    Method(
        "all-sources",
        "P_mix with every source, every step (ablation: no grouping)",
        init="t_t",
        group_rule="all",
        needs_target_run=True,
    ),
    # --- single-prompt baselines
    Method("pt", "plain prompt tuning from P_init for the stage-2 steps", init="p_init", uses_sources=False),
    Method(
        "pt-fair",
        "plain prompt tuning from P_init for T_t's stage-1 steps plus the stage-2 steps (budget-fair pt)",
        init="p_init",
        uses_sources=False,
        needs_target_run=True,
        fair_budget=True,
    ),
    Method(
        "spot",
        "prompt tuning from the source prompt whose mean-pooled prompt has the highest cosine to "
        "T_t's (SPoT)",
        init="top-1",
        ranking="spot",
        needs_target_run=True,
    ),
    Method(
        "tpv-top1",
        "prompt tuning from P_init + the TPV of the source ranked first by eq. 2",
        init="top-1",
        ranking="eq2",
        needs_target_run=True,
    ),
    Method(
        "tpv-sum",
        "prompt tuning from P_init + Σ of the TPVs of the `--top-k` sources ranked first by eq. 2 "
        "(TPV paper; default 2)",
        init="top-k-sum",
        ranking="eq2",
        needs_target_run=True,
    ),
    Method(
        "mix",
        "one prompt trained on the union of the sources' data (examples-proportional, `--mix-steps`, "
        "default the sources' stage-1 steps together; best checkpoint on their validation sets), "
        "then tuned on the target",
        init="mix",
    ),
)
"""Every stage-2 method (docs/architecture.md, 'Methods'), by name."""

NAMES = tuple(METHODS)
"""The method names, in the registry's order (the `--method` help and the TUI's choices)."""


def get(name: str) -> Method:
    """The registered method called `name`; a UserError listing the methods otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"unknown method {name!r}; choose one of {', '.join(NAMES)}") from None


def parse(entry: str) -> tuple[Method, dict[str, Any]]:
    """A method entry (`dtvg`, `dtvg:prefix`) as its method and the settings the suffix fixes."""
    name, _, rule = entry.partition(":")
    method = get(name)
    if not rule:
        return method, {}
    if rule not in method.rules:
        allowed = f"one of {', '.join(method.rules)}" if method.rules else "no grouping rule"
        raise UserError(f"method entry {entry!r}: {name} takes {allowed} after the colon")
    return method, {"grouping": rule}


def entry_settings(entry: str, grouping: str) -> dict[str, Any]:
    """The config values that make a run one of `entry`'s: its method, and for a method grouped by the
    setting, its rule (the entry's own, else `grouping`, the study's default)."""
    method, fixed = parse(entry)
    rule = {"grouping": fixed.get("grouping", grouping)} if method.group_rule == "setting" else {}
    return {"method": method.name, **rule}


def run_label(entry: str) -> str:
    """An entry as it appears in run ids: `dtvg:prefix` → `dtvg-prefix`."""
    return entry.replace(":", "-")
