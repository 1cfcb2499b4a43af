"""`dtvg_engine.config`'s value rules: the one check the CLI, the TUI form and the pipeline share."""

from __future__ import annotations

import math

import pytest

from dtvg_engine import config
from dtvg_engine.errors import UserError


def test_every_setting_has_a_rule() -> None:
    """A new setting without a rule would go unchecked everywhere; the method has its own registry check."""
    keys = set(config.TRAINING_DEFAULTS) | set(config.STAGE2_DEFAULTS)
    assert keys - set(config.SETTING_RULES) == {"method"}


@pytest.mark.parametrize(
    ("rule", "good", "bad"),
    [
        (config.Rule(int, low=1), [1, 7], [0, 1.0, 8.5, True, "2", None]),
        (config.Rule(float, low=0, above=True), [0.3, 2], [0, -1.0, math.nan, math.inf, False, "0.3"]),
        (config.Rule(float, low=0, high=1), [0, 0.5, 1], [1.5, -0.1, math.nan]),
        (config.Rule(int, low=1, optional=True), [None, 3], [0, "x"]),
        (config.Rule(str, choices=("a", "b")), ["a"], ["c", 1, None]),
    ],
)
def test_rule_accepts(rule: config.Rule, good: list, bad: list) -> None:
    assert all(rule.accepts(v) for v in good)
    assert not any(rule.accepts(v) for v in bad)


def test_check_settings_names_the_setting_as_its_caller_spells_it() -> None:
    with pytest.raises(
        UserError, match=r"^--source-scale-lr must be a finite number of at least 0 \(got -5\)$"
    ):
        config.check_settings({"source_scale_lr": -5})
    with pytest.raises(UserError, match=r"^study.toml: \[stage2\] steps must be an integer of at least 1"):
        config.check_settings({"steps": 2.5}, label=lambda key: f"study.toml: [stage2] {key}")


def test_swept_defaults_apply_to_their_model_only(tmp_path) -> None:
    """smollm2-135m runs take the swept lr and prompt length (docs/sweep.md), every other backbone the
    papers' values, and a setting given explicitly wins over both, in stage 1 and stage 2."""
    swept = config.MODEL_DEFAULTS["smollm2-135m"]
    assert set(swept) == {"lr", "prompt_length"}
    assert swept != {k: config.TRAINING_DEFAULTS[k] for k in swept}, "the sweep moved the defaults"
    own = config.stage1_config("rte")
    assert own["model"] == "smollm2-135m" and {k: own[k] for k in swept} == swept
    tiny = config.stage1_config("rte", model="tiny-llama")
    assert {k: tiny[k] for k in swept} == {k: config.TRAINING_DEFAULTS[k] for k in swept}
    assert config.stage1_config("rte", lr=0.05, prompt_length=12)["lr"] == 0.05
    pt = config.stage2_config("rte", [], "pt", tmp_path)
    assert {k: pt[k] for k in swept} == swept
    assert config.stage2_config("rte", [], "pt", tmp_path, model="tiny-llama")["lr"] == 0.3
