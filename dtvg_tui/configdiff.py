"""Config diff of several runs: one row per setting, one column per run (pure functions)."""

from __future__ import annotations

import json
from typing import Any

IGNORED = ("run_id", "created", "runs_dir")
"""Keys that differ between any two runs and say nothing about them."""


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys: {"a": {"b": 1}} → {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def show(value: Any) -> str:
    """A setting's value as short text (missing settings show as "—")."""
    if value is _MISSING:
        return "—"
    if isinstance(value, str):
        return value
    return json.dumps(value)


_MISSING = object()


def config_diff(
    configs: list[dict[str, Any]], only_differences: bool = False
) -> list[tuple[str, list[str], bool]]:
    """Rows `(key, [value per run], differs)` sorted by key; `only_differences` drops equal rows."""
    flats = [flatten({k: v for k, v in c.items() if k not in IGNORED}) for c in configs]
    keys = sorted(set().union(*flats)) if flats else []
    rows = []
    for key in keys:
        values = [show(flat.get(key, _MISSING)) for flat in flats]
        differs = len(set(values)) > 1
        if differs or not only_differences:
            rows.append((key, values, differs))
    return rows
