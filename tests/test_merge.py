"""Multi-task merging (DTVG eq. 6) and the stage-2 module of scaled task vectors."""

from __future__ import annotations

import pytest
import torch

from dtvg_engine.method.merge import ScaledTaskVectors, merged_prompt, rescaled

R, D = 3, 4


@pytest.fixture
def parts():
    torch.manual_seed(0)
    return {
        "p_init": torch.randn(R, D),
        "target": torch.randn(R, D),
        "sources": {name: torch.randn(R, D) for name in ("mnli", "qnli", "sst2")},
    }


def test_rescaled_is_token_level():
    tpv = torch.ones(R, D)
    scale = torch.tensor([1.0, 2.0, 0.5])
    out = rescaled(tpv, scale)
    assert torch.equal(out, torch.tensor([[1.0] * D, [2.0] * D, [0.5] * D]))


def test_merged_prompt_is_eq6(parts):
    a_t = torch.rand(R)
    a_s = [torch.rand(R), torch.rand(R)]
    t_s = [parts["sources"]["mnli"], parts["sources"]["sst2"]]
    out = merged_prompt(parts["p_init"], parts["target"], a_t, t_s, a_s)
    expected = parts["p_init"].clone()
    for i in range(R):  # the formula written out token by token
        expected[i] += a_t[i] * parts["target"][i] + a_s[0][i] * t_s[0][i] + a_s[1][i] * t_s[1][i]
    assert torch.allclose(out, expected, atol=1e-6)


def test_merged_prompt_without_sources(parts):
    out = merged_prompt(parts["p_init"], parts["target"], torch.ones(R), [], [])
    assert torch.allclose(out, parts["p_init"] + parts["target"])
    with pytest.raises(ValueError):
        merged_prompt(parts["p_init"], parts["target"], torch.ones(R), [parts["target"]], [])


def test_module_starts_at_p_init_with_unit_scales(parts):
    module = ScaledTaskVectors(parts["p_init"], parts["sources"], target_name="rte")
    assert torch.equal(module(selected=[]), parts["p_init"])  # T_t = 0: stage 2 starts from P_init
    assert module.mean_scales() == {"rte": 1.0, "mnli": 1.0, "qnli": 1.0, "sst2": 1.0}
    expected = parts["p_init"] + parts["sources"]["mnli"] + parts["sources"]["qnli"]
    assert torch.allclose(module(["mnli", "qnli"]), expected, atol=1e-6)


def test_module_matches_merged_prompt_and_grads_reach_only_selected(parts):
    module = ScaledTaskVectors(parts["p_init"], parts["sources"], "rte", target_init=parts["target"])
    with torch.no_grad():
        module.target_scale.uniform_(0.5, 1.5)
        module.source_scales.uniform_(0.5, 1.5)
    out = module(["sst2", "mnli"])
    s = module.source_scales
    expected = merged_prompt(
        parts["p_init"],
        parts["target"],
        module.target_scale.detach(),
        [parts["sources"]["sst2"], parts["sources"]["mnli"]],
        [s[2].detach(), s[0].detach()],
    )
    assert torch.allclose(out, expected, atol=1e-6)

    weights = torch.randn(R, D)
    (out * weights).sum().backward()
    assert module.target.grad.abs().sum() > 0
    assert module.target_scale.grad.abs().sum() > 0
    grads = module.source_scales.grad
    assert grads[0].abs().sum() > 0 and grads[2].abs().sum() > 0  # mnli, sst2 selected
    assert torch.equal(grads[1], torch.zeros(R))  # qnli not selected
    assert not module.p_init.requires_grad and not module.source_tpvs.requires_grad


def test_rescaled_vectors_are_detached(parts):
    module = ScaledTaskVectors(parts["p_init"], parts["sources"], "rte", target_init=parts["target"])
    with torch.no_grad():
        module.source_scales[1] = 2.0
    rescaled_sources = module.rescaled_sources()
    assert list(rescaled_sources) == ["mnli", "qnli", "sst2"]
    assert torch.allclose(rescaled_sources["qnli"], 2 * parts["sources"]["qnli"])
    assert not rescaled_sources["qnli"].requires_grad
    assert torch.allclose(module.rescaled_target(), parts["target"])
    assert not module.rescaled_target().requires_grad
    assert module.mean_scales()["qnli"] == pytest.approx(2.0)


def test_param_groups_two_learning_rates(parts):
    module = ScaledTaskVectors(parts["p_init"], parts["sources"], "rte")
    groups = module.param_groups(lr=0.3, source_scale_lr=0.01, weight_decay=1e-5)
    assert [g["name"] for g in groups] == ["target", "source_scales"]
    assert groups[0]["params"] == [module.target, module.target_scale] and groups[0]["lr"] == 0.3
    assert groups[1]["params"] == [module.source_scales] and groups[1]["lr"] == 0.01
    trainable = {id(p) for g in groups for p in g["params"]}
    assert trainable == {id(p) for p in module.parameters()}
    optimizer = torch.optim.AdamW(groups)
    module(["mnli"]).sum().backward()
    optimizer.step()
    assert not torch.equal(module.target, torch.zeros(R, D))


def test_module_without_sources_and_bad_input(parts):
    module = ScaledTaskVectors(parts["p_init"], {}, "rte")
    assert [g["name"] for g in module.param_groups(0.1, 0.01)] == ["target"]
    assert torch.equal(module([]), parts["p_init"])
    module = ScaledTaskVectors(parts["p_init"], parts["sources"], "rte")
    with pytest.raises(KeyError, match="unknown source"):
        module(["cola"])
    with pytest.raises(ValueError, match="also listed"):
        ScaledTaskVectors(parts["p_init"], parts["sources"], "mnli")
    with pytest.raises(ValueError, match="shape"):
        ScaledTaskVectors(parts["p_init"], {"x": torch.zeros(R + 1, D)}, "rte")


def test_state_dict_roundtrip(parts):
    module = ScaledTaskVectors(parts["p_init"], parts["sources"], "rte", target_init=parts["target"])
    state = module.state_dict()
    assert set(state) == {"p_init", "source_tpvs", "target", "target_scale", "source_scales"}
    fresh = ScaledTaskVectors(parts["p_init"], parts["sources"], "rte")
    fresh.load_state_dict(state)
    assert torch.equal(fresh(["qnli"]), module(["qnli"]))
