"""Source task grouping of DTVG (Zhang et al. 2025, §3.3, Appendix G, Algorithm 2).

A task prompt vector (TPV) is an ``[r, d]`` tensor: r prompt tokens ``v_1 .. v_r`` of hidden size d.
Everything here is a small function over such tensors, read top to bottom next to the paper:

- ``sim``                   eq. 2, the task similarity of two TPVs
- ``target_similarity``     eq. 3, TS of a group: mean sim to the target
- ``knowledge_consistency`` eq. 4, KC of a group: mean pairwise sim
- ``select_group``          eq. 5 solved greedily (Algorithm 2) or by a variant
                            (docs/architecture.md, 'Methods')

Efficiency: eq. 2 only needs the token sum ``Σ_i v_i`` of each TPV, so ``select_group`` reduces every TPV
to that one ``[d]`` vector once, and every similarity it needs is an entry of one small Gram matrix
``V Vᵀ / r²``. The selection itself then runs on plain Python floats (n ≤ a dozen sources).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dtvg_engine.errors import UserError
from dtvg_engine.runs.events import Group, Ranked

VARIANTS = ("greedy", "prefix", "exhaustive", "ts-only", "kc-only")
METRICS = ("dot", "cosine")


# ---------------------------------------------------------------------------------------------------------
# Eq. 2-4 on tensors


def token_sum(tpv: Tensor) -> Tensor:
    """``Σ_i v_i`` over the r tokens of a TPV ``[r, d]``: the only part of a TPV that eq. 2 uses.

    Summed in (at least) float32, which is 6x faster than float64 on CPU, then returned as float64 so that
    the dot products and the KC differences of Algorithm 2 are not rounded twice.
    """
    if tpv.dim() != 2:
        raise ValueError(f"a task prompt vector must be [r, d], got shape {tuple(tpv.shape)}")
    work_dtype = torch.promote_types(tpv.dtype, torch.float32)
    return tpv.detach().to(work_dtype).sum(dim=0).to(torch.float64)


def sim(t1: Tensor, t2: Tensor) -> float:
    """DTVG eq. 2: ``sim(T1, T2) = (1/r²) (Σ_i v_i¹)ᵀ (Σ_j v_j²)``, the dot product of the mean tokens."""
    _check_same_shape([t1, t2])
    r = t1.shape[0]
    return float(token_sum(t1) @ token_sum(t2)) / r**2


def target_similarity(group: Sequence[Tensor], target: Tensor) -> float:
    """DTVG eq. 3: ``TS(S, t) = (1/|S|) Σ_{s∈S} sim(T_s, T_t)``; 0 for an empty group."""
    if not group:
        return 0.0
    return sum(sim(tpv, target) for tpv in group) / len(group)


def knowledge_consistency(group: Sequence[Tensor]) -> float:
    """DTVG eq. 4: ``KC(S) = 2/(n(n-1)) Σ_{i<j} sim(T_i, T_j)``; 0 for fewer than two members."""
    pairs = list(itertools.combinations(group, 2))
    if not pairs:
        return 0.0
    return sum(sim(a, b) for a, b in pairs) / len(pairs)


def similarity_matrix(tpvs: dict[str, Tensor], metric: str = "dot") -> tuple[list[str], list[list[float]]]:
    """All pairwise similarities of named TPVs (or prompts), in the dict's order.

    ``dot``: DTVG eq. 2. ``cosine``: cosine of the mean-pooled vectors, SPoT's measure on prompts (the mean
    and the sum point the same way, so this is the cosine of the token sums; 0 where a vector is zero).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown similarity metric {metric!r}; choose one of {', '.join(METRICS)}")
    names = list(tpvs)
    if not names:
        return [], []
    _check_same_shape(list(tpvs.values()))
    sums = torch.stack([token_sum(tpvs[name]) for name in names])  # [n, d]
    if metric == "dot":
        matrix = gram(sums, r=tpvs[names[0]].shape[0])
    else:
        unit = sums / sums.norm(dim=1, keepdim=True).clamp_min(1e-12)
        matrix = unit @ unit.T
    return names, matrix.tolist()


def gram(sums: Tensor, r: int) -> Tensor:
    """Eq. 2 for all pairs at once: ``G[i, j] = sim(T_i, T_j) = s_iᵀ s_j / r²`` from token sums ``[n, d]``."""
    return (sums @ sums.T) / r**2


# ---------------------------------------------------------------------------------------------------------
# Eq. 5: choosing the group S'


@dataclass
class GroupResult:
    """The group chosen at one step, and what it was chosen from.

    ``selected``: chosen source names in ranking order. ``ranked``: every source with its sim to the
    target, by descending sim (ties by name). ``ts`` / ``kc``: eq. 3 / eq. 4 of the selected group.
    """

    selected: list[str]
    ranked: list[tuple[str, float]]
    ts: float
    kc: float
    objective: float = 0.0  # TS + λ·KC of the selected group (eq. 5)

    def event(self, step: int, scales: dict[str, float]) -> Group:
        """The `group` event of this choice at `step`; `scales`: the mean token scale of each task."""
        return Group(
            step=step,
            ranked=[Ranked(task=name, sim=sim) for name, sim in self.ranked],
            selected=list(self.selected),
            ts=self.ts,
            kc=self.kc,
            scales=scales,
        )


def select_group(
    target: Tensor,
    sources: dict[str, Tensor],
    variant: str = "greedy",
    lam: float = 1.0,
    max_exhaustive: int = 12,
) -> GroupResult:
    """Choose the source group S' for the target (DTVG eq. 5) by one of the rules (docs/architecture.md,
    'Methods').

    - ``greedy``: Algorithm 2 (see ``greedy_group``). Uses KC only; ``lam`` does not enter.
    - ``prefix``: the authors' public code: the best-KC prefix of the ranking (see ``prefix_group``).
    - ``exhaustive``: the exact maximiser of ``TS + λ·KC`` over all non-empty subsets of the sources with
      sim ≥ 0 (UserError beyond ``max_exhaustive`` of them: 2^n subsets).
    - ``ts-only``: every source with sim ≥ 0 (ablation without KC).
    - ``kc-only``: the authors' ablation: over all subsets of *all* the sources, the one with the highest
      KC; empty when no subset's KC is > 0 (see ``best_kc_subset``). TS does not enter.

    Callers pass detached tensors (the rescaled TPVs α ⊙ T of eq. 6); nothing here builds a graph.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown grouping variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    names = list(sources)
    with torch.no_grad():
        _check_same_shape([target, *sources.values()])
        sums = torch.stack([token_sum(target)] + [token_sum(sources[n]) for n in names])
        g = gram(sums, r=target.shape[0]).tolist()  # row/col 0 is the target, i + 1 is names[i]
    to_target = {name: g[0][i + 1] for i, name in enumerate(names)}
    pair = {(a, b): g[i + 1][j + 1] for i, a in enumerate(names) for j, b in enumerate(names)}

    ranked = rank_sources(to_target)
    order = [name for name, _ in ranked]
    candidates = [name for name, s in ranked if s >= 0]

    if variant == "greedy":
        selected = greedy_group(order, to_target, pair)
    elif variant == "prefix":
        selected = prefix_group(order, to_target, pair)
    elif variant == "ts-only":
        selected = candidates
    else:
        searched = candidates if variant == "exhaustive" else order
        if len(searched) > max_exhaustive:
            raise UserError(
                f"{variant} grouping would search 2^{len(searched)} groups of source tasks; "
                f"use at most {max_exhaustive} sources or the greedy grouping"
            )
        if variant == "exhaustive":
            selected = best_subset(candidates, lambda s: ts_of(s, to_target) + lam * kc_of(s, pair))
        else:
            selected = best_kc_subset(order, pair)

    ts, kc = ts_of(selected, to_target), kc_of(selected, pair)
    return GroupResult(selected, ranked, ts, kc, objective=ts + lam * kc)


def rank_sources(to_target: dict[str, float]) -> list[tuple[str, float]]:
    """Algorithm 2, step 1: the ranking Π of the sources by descending sim to the target (ties by name)."""
    return sorted(to_target.items(), key=lambda item: (-item[1], item[0]))


def ts_of(group: Sequence[str], to_target: dict[str, float]) -> float:
    """Eq. 3 from precomputed sims: mean sim of the group's members to the target, 0 for none."""
    return sum(to_target[name] for name in group) / len(group) if group else 0.0


def kc_of(group: Sequence[str], pair: dict[tuple[str, str], float]) -> float:
    """Eq. 4 from precomputed sims: mean sim over unordered pairs, 0 for fewer than two members."""
    pairs = list(itertools.combinations(group, 2))
    return sum(pair[p] for p in pairs) / len(pairs) if pairs else 0.0


def greedy_group(
    order: list[str], to_target: dict[str, float], pair: dict[tuple[str, str], float]
) -> list[str]:
    """Algorithm 2, step 2, followed line by line.

    Start from S' = ∅ and walk the *whole* ranking Π; add s when ``sim(t, s) ≥ 0`` and
    ``Δ(S', s) = KC(S' ∪ {s}) − KC(S') ≥ 0``.

    Ambiguity resolved: the prose of §3.3 says "until KC(S') is no longer increasing", which reads as stopping
    at the first rejected source; Algorithm 2 has no break, and docs/architecture.md ('Methods') says to walk
    the whole ranking, so a rejected source is skipped and later sources still get their chance. Consequences,
    all straight from eq. 4: the first source with sim ≥ 0 always enters (KC of ∅ and of one member are both
    0, Δ = 0); the second enters iff its sim to the first is ≥ 0; a source with sim < 0 to the target never
    enters (and since Π is sorted, none after it does either). Δ ≥ 0 at every addition, so KC never drops
    along the way.
    """
    group: list[str] = []
    pair_sum = 0.0  # Σ_{i<j} sim(T_i, T_j) over the current group, kept so KC(S' ∪ {s}) is O(|S'|)
    for name in order:
        if to_target[name] < 0:
            continue
        new_pair_sum = pair_sum + sum(pair[(member, name)] for member in group)
        kc_before = _mean_pair(pair_sum, len(group))
        kc_after = _mean_pair(new_pair_sum, len(group) + 1)
        if kc_after - kc_before >= 0:
            group.append(name)
            pair_sum = new_pair_sum
    return group


def prefix_group(
    order: list[str], to_target: dict[str, float], pair: dict[tuple[str, str], float]
) -> list[str]:
    """The variant of the authors' public code: the ranking prefix with the highest KC (eq. 4).

    Only sources with sim ≥ 0 are considered, in ranking order; a one-source prefix has KC 0; ties go to
    the shorter prefix; no source with sim ≥ 0 → empty group. Unlike ``greedy_group`` a source with a
    negative pairwise sim can enter if the sources after it make up for it, and a source can be skipped
    only together with everything ranked below it.
    """
    candidates = [name for name in order if to_target[name] >= 0]
    best: list[str] = candidates[:1]
    best_kc = 0.0
    pair_sum = 0.0
    for k in range(1, len(candidates)):
        pair_sum += sum(pair[(member, candidates[k])] for member in candidates[:k])
        kc = _mean_pair(pair_sum, k + 1)
        if kc > best_kc:
            best, best_kc = candidates[: k + 1], kc
    return best


def best_subset(candidates: list[str], score: Callable[[tuple[str, ...]], Any]) -> list[str]:
    """The non-empty subset of ``candidates`` with the highest ``score(subset)`` (eq. 5 by brute force).

    Subsets are visited smallest first, each in ranking order, and only a strictly better score replaces
    the best so far: ties go to the smaller, higher-ranked group. Empty in, empty out.
    """
    best: list[str] = []
    best_score = None
    for size in range(1, len(candidates) + 1):
        for subset in itertools.combinations(candidates, size):
            value = score(subset)
            if best_score is None or value > best_score:
                best, best_score = list(subset), value
    return best


def best_kc_subset(order: list[str], pair: dict[tuple[str, str], float]) -> list[str]:
    """``kc-only`` as the authors' ablation: the subset of all sources with the highest KC (eq. 4).

    Their code starts from a best KC of 0 and keeps a subset only when its KC is strictly higher, so the
    group is empty unless some subset (of two or more sources) has KC > 0. Ties go to the smaller,
    higher-ranked subset, as in ``best_subset``.
    """
    best = best_subset(order, lambda s: kc_of(s, pair))
    return best if kc_of(best, pair) > 0 else []


def _mean_pair(pair_sum: float, n: int) -> float:
    """Eq. 4 from the sum over unordered pairs of an n-member group."""
    return pair_sum / (n * (n - 1) / 2) if n >= 2 else 0.0


def _check_same_shape(tpvs: Sequence[Tensor]) -> None:
    shapes = {tuple(t.shape) for t in tpvs}
    if len(shapes) > 1:
        raise UserError(
            f"task prompt vectors have different shapes {sorted(shapes)}; "
            "tune all tasks from the same --model/--prompt-length/--init-seed"
        )
    for t in tpvs:
        if t.dim() != 2:
            raise ValueError(f"a task prompt vector must be [r, d], got shape {tuple(t.shape)}")
