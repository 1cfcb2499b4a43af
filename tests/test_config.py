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
