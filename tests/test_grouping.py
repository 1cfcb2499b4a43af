"""Source task grouping (DTVG eq. 2-5, Algorithm 2) against hand-computed cases and properties."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dtvg_engine.errors import UserError
from dtvg_engine.method.grouping import (
    knowledge_consistency,
    select_group,
    sim,
    similarity_matrix,
    target_similarity,
)


def tpv(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# ----------------------------------------------------------------------------------------------------------
# Eq. 2-4 by hand


def test_sim_2x2_by_hand():
    # token sums (1+3, 2+4) = (4, 6) and (0+1, 1+0) = (1, 1); dot = 10; r² = 4
    assert sim(tpv([1, 2], [3, 4]), tpv([0, 1], [1, 0])) == pytest.approx(2.5)


def test_sim_3x2_by_hand():
    # token sums (2, 2) and (2, 2); dot = 8; r² = 9
    assert sim(tpv([1, 0], [0, 1], [1, 1]), tpv([1, 1], [1, -1], [0, 2])) == pytest.approx(8 / 9)


def test_sim_is_dot_of_mean_tokens():
    a, b = torch.randn(5, 7), torch.randn(5, 7)
    assert sim(a, b) == pytest.approx(float(a.mean(0) @ b.mean(0)), rel=1e-5)


def test_target_similarity_and_knowledge_consistency_by_hand():
    t = tpv([1, 0], [1, 0])  # sum (2, 0)
    a = tpv([1, 1], [0, 0])  # sum (1, 1)
    b = tpv([0, 2], [0, 0])  # sum (0, 2)
    c = tpv([-1, 0], [0, 0])  # sum (-1, 0)
    # sims to t: a = 2/4, b = 0, c = -2/4
    assert target_similarity([a, b, c], t) == pytest.approx((0.5 + 0 - 0.5) / 3)
    assert target_similarity([], t) == 0.0
    # pairs: ab = 2/4, ac = -1/4, bc = 0
    assert knowledge_consistency([a, b, c]) == pytest.approx((0.5 - 0.25 + 0) / 3)
    assert knowledge_consistency([a, b]) == pytest.approx(0.5)
    assert knowledge_consistency([a]) == 0.0
    assert knowledge_consistency([]) == 0.0


def test_similarity_matrix_dot_and_cosine():
    tpvs = {"x": tpv([1, 0], [1, 0]), "y": tpv([0, 3], [0, 1]), "z": tpv([1, 1], [1, 1])}
    names, dot = similarity_matrix(tpvs, "dot")
    assert names == ["x", "y", "z"]
    # sums x = (2, 0), y = (0, 4), z = (2, 2); r² = 4
    assert torch.allclose(torch.tensor(dot), torch.tensor([[1.0, 0, 1], [0, 4, 2], [1, 2, 2]]))
    _, cos = similarity_matrix(tpvs, "cosine")
    h = 2**-0.5
    assert torch.allclose(torch.tensor(cos), torch.tensor([[1, 0, h], [0, 1, h], [h, h, 1]]))
    with pytest.raises(ValueError, match="metric"):
        similarity_matrix(tpvs, "euclid")


def test_different_shapes_are_refused():
    with pytest.raises(UserError, match="--prompt-length"):
        sim(torch.zeros(2, 3), torch.zeros(3, 3))


# ----------------------------------------------------------------------------------------------------------
# Variants on one hand-made case where they all differ
#
# r = 1, so sim is a plain dot product.  t = (-2, 2, 2), a = (-1, 0, 2), b = (-1, 2, -1), c = (0, 2, -1).
# sim to t:  a = 6, b = 4, c = 2            → ranking a, b, c (all ≥ 0)
# pairwise:  ab = -1, ac = -2, bc = 5
# greedy (Algorithm 2): a enters (Δ = 0); b: KC{a,b} = -1 < 0 → skipped; c: KC{a,c} = -2 < 0 → skipped → {a}
# prefix: KC[a] = 0, KC[a,b] = -1, KC[a,b,c] = (-1 - 2 + 5)/3 = 2/3 → best prefix [a, b, c]:
#         b and c are consistent with each other, which greedy never sees because it compares to {a} only
# exhaustive (λ = 1): {a} 6, {b} 4, {c} 2, {a,b} 5-1 = 4, {a,c} 4-2 = 2, {b,c} 3+5 = 8, {a,b,c} 4+2/3
#         → {b, c}: it may drop the top-ranked source, which neither heuristic can
# kc-only: best KC is {b, c} = 5; ts-only: every source with sim ≥ 0 → {a, b, c}

CASE_T = tpv([-2, 2, 2])
CASE = {"a": tpv([-1, 0, 2]), "b": tpv([-1, 2, -1]), "c": tpv([0, 2, -1])}


def test_ranking_of_the_case():
    result = select_group(CASE_T, CASE)
    assert result.ranked == [("a", 6.0), ("b", 4.0), ("c", 2.0)]


@pytest.mark.parametrize(
    ("variant", "selected", "ts", "kc"),
    [
        ("greedy", ["a"], 6.0, 0.0),
        ("prefix", ["a", "b", "c"], 4.0, 2 / 3),
        ("exhaustive", ["b", "c"], 3.0, 5.0),
        ("kc-only", ["b", "c"], 3.0, 5.0),
        ("ts-only", ["a", "b", "c"], 4.0, 2 / 3),
    ],
)
def test_variants_differ_on_the_case(variant, selected, ts, kc):
    result = select_group(CASE_T, CASE, variant=variant)
    assert result.selected == selected
    assert result.ts == pytest.approx(ts)
    assert result.kc == pytest.approx(kc)
    assert result.objective == pytest.approx(ts + kc)


def test_exhaustive_lambda_trades_ts_against_kc():
    # λ = 0 is eq. 5 with TS only: the single best source
    assert select_group(CASE_T, CASE, variant="exhaustive", lam=0.0).selected == ["a"]


def test_greedy_equal_kc_still_enters():
    # Δ ≥ 0, not > 0: sim to t a = 3, b = 2, c = 1; ab = 1, ac = 2, bc = 0
    # KC{a,b} = 1, KC{a,b,c} = (1 + 2 + 0)/3 = 1 → Δ = 0 → c enters; the prefix variant breaks the tie
    # between [a, b] and [a, b, c] (both KC 1) towards the shorter prefix.
    t = tpv([1, 1, 2])
    sources = {"a": tpv([2, -1, 1]), "b": tpv([0, 0, 1]), "c": tpv([1, 0, 0])}
    assert select_group(t, sources, "greedy").selected == ["a", "b", "c"]
    assert select_group(t, sources, "prefix").selected == ["a", "b"]


def test_greedy_walks_past_a_rejected_source():
    # sim to t: a = 3, b = 2, c = 1; ab = -3 (b rejected), ac = 3 (c still considered, and accepted):
    # reading §3.3's "until KC is no longer increasing" as a stop would have returned {a}
    t = tpv([1, 1, 0])
    sources = {"a": tpv([3, 0, 0]), "b": tpv([-1, 3, 0]), "c": tpv([1, 0, 0])}
    assert select_group(t, sources, "greedy").selected == ["a", "c"]


def test_negative_sim_sources_are_never_selected():
    t = tpv([1, 0])
    sources = {"pos": tpv([2, 1]), "neg": tpv([-1, 5]), "zero": tpv([0, 3])}
    for variant in ("greedy", "prefix", "exhaustive", "ts-only"):
        result = select_group(t, sources, variant=variant)
        assert "neg" not in result.selected, variant
    # sim = 0 counts as ≥ 0: "zero" is a candidate (ts-only takes it)
    assert select_group(t, sources, "ts-only").selected == ["pos", "zero"]


def test_kc_only_searches_every_source_not_only_those_with_sim_at_least_0():
    """The authors' ablation drops TS entirely: the most consistent pair wins even if it opposes t."""
    t = tpv([1, 0])
    sources = {"pos": tpv([1, 0]), "n1": tpv([-1, 3]), "n2": tpv([-1, 3])}  # n1·n2 = 10, pos·n = -1
    assert select_group(t, sources, "kc-only").selected == ["n1", "n2"]


def test_kc_only_is_empty_when_no_subset_has_kc_above_0():
    t = tpv([1, 0])
    sources = {"a": tpv([1, 1]), "b": tpv([1, -1])}  # both similar to t, but a·b = 0
    result = select_group(t, sources, "kc-only")
    assert (result.selected, result.kc) == ([], 0.0)


@pytest.mark.parametrize("variant", ["greedy", "prefix", "exhaustive", "ts-only", "kc-only"])
def test_empty_group_when_every_sim_is_negative(variant):
    t = tpv([1, 1])
    sources = {"a": tpv([-1, 0]), "b": tpv([0, -2])}
    result = select_group(t, sources, variant=variant)
    assert result.selected == []
    assert (result.ts, result.kc) == (0.0, 0.0)
    assert [name for name, _ in result.ranked] == ["a", "b"]


def test_no_sources():
    result = select_group(tpv([1, 1]), {})
    assert (result.selected, result.ranked, result.ts, result.kc) == ([], [], 0.0, 0.0)


def test_ties_in_the_ranking_are_broken_by_name():
    t = tpv([1, 0])
    sources = {"zeta": tpv([1, 0]), "alpha": tpv([1, 5]), "mid": tpv([2, 0])}
    assert [name for name, _ in select_group(t, sources).ranked] == ["mid", "alpha", "zeta"]


def test_unknown_variant_and_too_many_for_exhaustive():
    with pytest.raises(ValueError, match="variant"):
        select_group(CASE_T, CASE, variant="best")
    with pytest.raises(UserError, match="greedy"):
        select_group(CASE_T, CASE, variant="exhaustive", max_exhaustive=2)
    with pytest.raises(UserError):
        select_group(CASE_T, CASE, variant="kc-only", max_exhaustive=2)


def test_no_graph_is_built():
    t = torch.randn(4, 3, requires_grad=True)
    sources = {"a": torch.randn(4, 3, requires_grad=True)}
    result = select_group(t, sources)
    assert isinstance(result.ts, float) and isinstance(result.ranked[0][1], float)


# ----------------------------------------------------------------------------------------------------------
# Properties (integer-valued entries keep every sum exact, so ties are frequent and exercised)

entries = st.integers(min_value=-4, max_value=4).map(float)


@st.composite
def problems(draw):
    r = draw(st.integers(1, 3))
    d = draw(st.integers(1, 3))
    n = draw(st.integers(0, 7))

    def one():
        return torch.tensor(draw(st.lists(entries, min_size=r * d, max_size=r * d))).reshape(r, d)

    target = one()
    sources = {f"s{i}": one() for i in range(n)}
    return target, sources


def _kc(names, sources):
    return knowledge_consistency([sources[n] for n in names])


@settings(max_examples=100, deadline=None)
@given(problems())
def test_greedy_never_lowers_kc(problem):
    target, sources = problem
    selected = select_group(target, sources, "greedy").selected
    # greedy adds in ranking order, so its intermediate groups are the prefixes of `selected`
    for k in range(1, len(selected)):
        assert _kc(selected[: k + 1], sources) >= _kc(selected[:k], sources) - 1e-9


@settings(max_examples=100, deadline=None)
@given(problems(), st.sampled_from(["greedy", "prefix", "exhaustive", "ts-only"]))
def test_selected_sources_have_nonnegative_sim(problem, variant):
    target, sources = problem
    result = select_group(target, sources, variant)
    assert all(sim(sources[name], target) >= 0 for name in result.selected)
    sims = dict(result.ranked)
    assert [n for n, _ in result.ranked if n in result.selected] == result.selected  # in ranking order
    if any(s >= 0 for s in sims.values()):
        assert result.selected  # every variant picks something when there is a candidate


@settings(max_examples=100, deadline=None)
@given(problems())
def test_ranked_is_sorted_and_complete(problem):
    target, sources = problem
    ranked = select_group(target, sources).ranked
    assert sorted(name for name, _ in ranked) == sorted(sources)
    assert all(a[1] >= b[1] for a, b in zip(ranked, ranked[1:], strict=False))
    for name, value in ranked:
        assert value == pytest.approx(sim(sources[name], target), abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(problems())
def test_sim_is_symmetric_and_self_sim_nonnegative(problem):
    target, sources = problem
    for tpv_ in sources.values():
        assert sim(tpv_, target) == sim(target, tpv_)
        assert sim(tpv_, tpv_) >= 0


@settings(max_examples=100, deadline=None)
@given(problems(), st.sampled_from([0.0, 0.5, 1.0, 2.0]))
def test_exhaustive_beats_greedy_and_prefix_on_eq5(problem, lam):
    target, sources = problem
    best = select_group(target, sources, "exhaustive", lam=lam)
    for variant in ("greedy", "prefix", "ts-only"):
        other = select_group(target, sources, variant, lam=lam)
        assert best.objective >= other.objective - 1e-9
        assert other.objective == pytest.approx(other.ts + lam * other.kc)


def kc_only_reference(target, sources):
    """The authors' `kc-only` by brute force on the tensors: every subset of every source with eq. 4
    by `knowledge_consistency`; the best KC if it is > 0, and every subset reaching it (within rounding)."""
    import itertools

    order = [name for name, _ in select_group(target, sources).ranked]
    subsets = [list(s) for size in range(1, len(order) + 1) for s in itertools.combinations(order, size)]
    best_kc = max([0.0, *(_kc(s, sources) for s in subsets)])
    return best_kc, [s for s in subsets if best_kc > 0 and _kc(s, sources) >= best_kc - 1e-9]


@settings(max_examples=300, deadline=None)
@given(problems())
def test_kc_only_matches_the_all_subsets_reference(problem):
    target, sources = problem
    result = select_group(target, sources, "kc-only")
    best_kc, best = kc_only_reference(target, sources)
    assert result.kc == pytest.approx(best_kc, abs=1e-9)
    if best_kc == 0.0:
        assert result.selected == []
    else:
        assert result.selected in best
        if len(best) == 1:
            assert result.selected == best[0]


def test_kc_only_ties_go_to_the_smaller_higher_ranked_subset():
    t = tpv([1, 0, 0])
    # a·b = a·c = b·c = 1: every pair and the triple have KC 1; a and b rank first
    sources = {"c": tpv([0, 1, 1]), "b": tpv([1, 0, 1]), "a": tpv([1, 1, 0])}
    assert select_group(t, sources, "kc-only").selected == ["a", "b"]
