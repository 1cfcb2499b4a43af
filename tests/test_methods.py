"""Stage-2 methods from the registry: what each one starts from and which group it evaluates with."""

from __future__ import annotations

import pytest
import torch

from dtvg_engine.config import Stage2Settings
from dtvg_engine.errors import UserError
from dtvg_engine.method import method_registry
from dtvg_engine.method.methods import Transfer, build_tuner
from dtvg_engine.train.training import Tuner

R = 2


def tpv(*row: float) -> torch.Tensor:
    """A TPV of R identical tokens (eq. 2 then reads the row directly)."""
    return torch.tensor([row] * R, dtype=torch.float32)


def tuner_of(method: str, sources: list[str], p_init: torch.Tensor, tpvs: dict, **extra) -> tuple[Tuner, str]:
    """The tuner of `method` transferring from `sources` to rte (greedy grouping, λ 1, top-k 2)."""
    settings = Stage2Settings(method=method, steps=4, **extra)
    return build_tuner(settings, Transfer("rte", sources, tpvs), p_init)


def test_evaluation_regroups_from_the_current_parameters() -> None:
    """The prompt evaluated and saved uses the group of the scales as they are after the last update, as
    the authors regroup on every forward pass; it used to keep the group of the step before."""
    p_init = torch.zeros(R, 2)
    tpvs = {"rte": tpv(1, 0), "a": tpv(1, 0), "b": tpv(-1, 0)}
    tuner, _ = tuner_of("dtvg", ["a", "b"], p_init, tpvs)
    _, event = tuner.step_prompt(1)
    assert event.selected == ["a"]  # sim(a, t) = 1, sim(b, t) = -1
    with torch.no_grad():  # an optimizer step that flips both source scales: now only b points along t
        tuner.vectors.source_scales.fill_(-1.0)
    assert torch.equal(tuner.prompt(), tuner.vectors(["b"]).detach())
    _, event = tuner.step_prompt(2)
    assert event.selected == ["b"]  # training's next step agrees with what was evaluated


def test_fixed_group_evaluates_with_its_first_group() -> None:
    p_init = torch.zeros(R, 2)
    tpvs = {"rte": tpv(1, 0), "a": tpv(1, 0), "b": tpv(-1, 0)}
    tuner, _ = tuner_of("fixed-group", ["a", "b"], p_init, tpvs)
    tuner.step_prompt(1)
    with torch.no_grad():
        tuner.vectors.source_scales.fill_(-1.0)
    assert torch.equal(tuner.prompt(), tuner.vectors(["a"]).detach())


SUM_TPVS = {"rte": tpv(1, 1), "near": tpv(2, 2), "mid": tpv(1, 0), "far": tpv(-1, 0)}
"""Eq. 2 to the target: near 4, mid 1, far -1."""


@pytest.mark.parametrize(("k", "chosen"), [(1, ["near"]), (2, ["near", "mid"]), (5, ["near", "mid", "far"])])
def test_tpv_sum_adds_the_top_k_sources_by_eq2(k: int, chosen: list[str]) -> None:
    """The TPV paper combines a few related sources, not every one listed (it used to add them all)."""
    p_init = torch.randn(R, 2)
    tuner, note = tuner_of("tpv-sum", ["far", "mid", "near"], p_init, SUM_TPVS, top_k=k)
    expected = p_init + sum(SUM_TPVS[name] for name in chosen)
    assert torch.allclose(tuner.prompt(), expected)
    assert f"Σ TPV of {', '.join(chosen)}" in note


def test_tpv_top1_and_spot_start_from_their_best_source() -> None:
    p_init = torch.zeros(R, 2)
    tuner, note = tuner_of("tpv-top1", ["far", "mid", "near"], p_init, SUM_TPVS)
    assert torch.equal(tuner.prompt(), SUM_TPVS["near"]) and "from near's prompt" in note


@pytest.mark.parametrize("name", method_registry.NAMES)
def test_every_registered_method_is_consistent(name: str) -> None:
    method = method_registry.get(name)
    assert method.init in method_registry.INITS
    assert method.grouped == (method.init == "t_t")
    assert method.grouped or method.group_rule is None  # only grouped methods choose a group
    if method.grouped:  # a grouped method without a rule is the one without sources
        assert (method.group_rule is None) == (not method.uses_sources)
    if method.grouped or method.ranking:  # starts from T_t, or ranks sources against it
        assert method.needs_target_run
    if method.init in ("top-1", "top-k-sum"):
        assert method.ranking in ("eq2", "spot") and method.uses_sources


def test_entries_name_a_grouping_rule() -> None:
    assert method_registry.parse("dtvg:prefix") == (method_registry.get("dtvg"), {"grouping": "prefix"})
    assert method_registry.entry_settings("dtvg", "greedy") == {"method": "dtvg", "grouping": "greedy"}
    assert method_registry.entry_settings("fixed-group:exhaustive", "greedy")["grouping"] == "exhaustive"
    assert method_registry.entry_settings("pt", "prefix") == {"method": "pt"}
    with pytest.raises(UserError, match="pt takes no grouping rule"):
        method_registry.parse("pt:prefix")
    with pytest.raises(UserError, match="one of greedy, prefix, exhaustive"):
        method_registry.parse("dtvg:best")
    with pytest.raises(UserError, match="unknown method 'magic'"):
        method_registry.parse("magic")
