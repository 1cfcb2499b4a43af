"""Task prompt vectors (Belanec et al. 2024, §3.2) on disk, and their arithmetic.

A task prompt vector is ``T = P* − P_init`` (TPV eq. 5): the tuned soft prompt minus the shared
initialization it was tuned from, an ``[r, d]`` tensor. Vectors from the same initialization can be added
and scaled (TPV eq. 3, 4, 7): ``combine`` computes ``scale · Σ coef · T`` and ``parse_expression`` reads
the terms from a string such as ``"0.5*mnli + qnli - sst2"``.

On disk (docs/architecture.md, 'Run folder'): ``tpv.safetensors`` with the tensor under key ``"tpv"`` and
JSON-encoded metadata ``task, model, prompt_length, init_id, best_metric, metric_name, step, run_id``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import torch
from safetensors.torch import save_file
from torch import Tensor

from dtvg_engine.errors import UserError
from dtvg_engine.method.tpv_numpy import TPV_KEY, encode_metadata, load_tpv_numpy, read_tpv_file
from dtvg_engine.runs.atomic import replacing

__all__ = [
    "METADATA_KEYS",
    "check_compatible",
    "combine",
    "load_tpv",
    "load_tpv_numpy",
    "parse_expression",
    "save_tpv",
    "task_prompt_vector",
]

METADATA_KEYS = ("task", "model", "prompt_length", "init_id", "best_metric", "metric_name", "step", "run_id")
COMPAT_KEYS = ("init_id", "model", "prompt_length")  # what must agree for TPVs to be combined or compared


def task_prompt_vector(tuned_prompt: Tensor, p_init: Tensor) -> Tensor:
    """TPV eq. 5: ``T = P* − P_init``, detached."""
    if tuned_prompt.shape != p_init.shape:
        raise ValueError(f"prompt shape {tuple(tuned_prompt.shape)} != init shape {tuple(p_init.shape)}")
    return (tuned_prompt - p_init).detach()


# ---------------------------------------------------------------------------------------------------------
# Files


def save_tpv(path: str | Path, tpv: Tensor, metadata: dict[str, str | int | float | None]) -> None:
    """Write ``tpv`` under key ``"tpv"`` with JSON-encoded metadata, atomically (`atomic.replacing`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensor = tpv.detach().to("cpu").contiguous()
    with replacing(path) as tmp:
        save_file({TPV_KEY: tensor}, tmp, metadata=encode_metadata(metadata))


def load_tpv(path: str | Path) -> tuple[Tensor, dict[str, str | int | float | None]]:
    """The ``[r, d]`` TPV and its decoded metadata; UserError for a missing file or one without ``"tpv"``."""
    return read_tpv_file(path, framework="pt")


def check_compatible(metas: Sequence[dict]) -> None:
    """Refuse TPVs that were not tuned from the same initialization (same model, prompt length, init).

    Arithmetic and similarities across initializations are meaningless (docs/architecture.md, 'Run folder');
    the error names the first two runs that disagree and how to fix it.
    """
    if not metas:
        return
    first = metas[0]
    for other in metas[1:]:
        differing = [key for key in COMPAT_KEYS if first.get(key) != other.get(key)]
        if differing:
            a, b = _labels(first, other)
            raise UserError(
                f"TPVs come from different initializations: {a} ({_describe(first, differing)}) vs "
                f"{b} ({_describe(other, differing)}); "
                "tune both from the same --model/--prompt-length/--init-seed"
            )


def _labels(a: dict, b: dict) -> tuple[str, str]:
    """How to name two runs in a message: the task, plus the run id where the tasks coincide."""
    label_a, label_b = str(a.get("task") or a.get("run_id")), str(b.get("task") or b.get("run_id"))
    if label_a == label_b:
        label_a, label_b = f"{label_a} [run {a.get('run_id')}]", f"{label_b} [run {b.get('run_id')}]"
    return label_a, label_b


def _describe(meta: dict, keys: list[str]) -> str:
    """``init smollm2-135m-r100-s0`` (or the model / prompt length where the init ids agree)."""
    words = {"init_id": "init", "model": "model", "prompt_length": "prompt length"}
    key = "init_id" if "init_id" in keys else keys[0]
    value = meta.get(key)
    return f"{words[key]} {value if value is not None else 'unknown'}"


# ---------------------------------------------------------------------------------------------------------
# Arithmetic (TPV paper §3: τ_new = Σ_i τ_i, θ_new = θ + λ τ)

_SPACE = re.compile(r"\s*")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_HINT = "write terms like '0.5*mnli + qnli - sst2'"


def parse_expression(expr: str) -> list[tuple[float, str]]:
    """Read ``"0.5*mnli + qnli - sst2"`` into ``[(0.5, "mnli"), (1.0, "qnli"), (-1.0, "sst2")]``.

    Grammar: ``[sign] term ((+|-) term)*`` with ``term = [number *] name``. Names are task names or run
    ids (letters, digits, ``_``, ``-``, ``.``; not starting with ``-`` or ``.``). Because a name may contain
    ``-``, a minus between two names needs a space before it: ``"a -b"`` is a − b, ``"a-b"`` is one name.
    UserError with the 0-based position of the first thing that does not fit.
    """
    terms: list[tuple[float, str]] = []
    pos = _skip_space(expr, 0)
    if pos == len(expr):
        raise UserError(f"empty TPV expression; {_HINT}")
    sign = 1.0
    if expr[pos] in "+-":
        sign = -1.0 if expr[pos] == "-" else 1.0
        pos = _skip_space(expr, pos + 1)
    while True:
        coef, name, pos = _parse_term(expr, pos)
        terms.append((sign * coef, name))
        pos = _skip_space(expr, pos)
        if pos == len(expr):
            return terms
        if expr[pos] not in "+-":
            _syntax_error(expr, pos, "expected '+' or '-'")
        sign = -1.0 if expr[pos] == "-" else 1.0
        pos = _skip_space(expr, pos + 1)


def _parse_term(expr: str, pos: int) -> tuple[float, str, int]:
    """``[number *] name`` at ``pos``: (coefficient, name, position after the term)."""
    token, end = _read_name(expr, pos)
    after = _skip_space(expr, end)
    if after < len(expr) and expr[after] == "*":
        coef = _to_number(token)
        if coef is None:
            _syntax_error(expr, pos, f"expected a number before '*', got {token!r}")
        name, end = _read_name(expr, _skip_space(expr, after + 1))
        return coef, name, end
    return 1.0, token, end


def _read_name(expr: str, pos: int) -> tuple[str, int]:
    match = _NAME.match(expr, pos)
    if match is None:
        _syntax_error(expr, pos, "expected a task name or run id")
    return match.group(0), match.end()


def _to_number(token: str) -> float | None:
    try:
        value = float(token)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _skip_space(expr: str, pos: int) -> int:
    return _SPACE.match(expr, pos).end()


def _syntax_error(expr: str, pos: int, what: str) -> NoReturn:
    found = repr(expr[pos]) if pos < len(expr) else "end of text"
    raise UserError(f"bad TPV expression {expr!r} at position {pos} ({found}): {what}; {_HINT}")


def combine(terms: Sequence[tuple[float, Tensor]], scale: float = 1.0) -> Tensor:
    """TPV eq. 3/4/7: ``scale · Σ coef · T`` over ``(coef, T)`` terms of one shape."""
    if not terms:
        raise UserError(f"nothing to combine: the TPV expression has no terms; {_HINT}")
    shapes = {tuple(tpv.shape) for _, tpv in terms}
    if len(shapes) > 1:
        raise UserError(
            f"cannot combine TPVs of different shapes {sorted(shapes)}; "
            "tune all tasks from the same --model/--prompt-length/--init-seed"
        )
    total = torch.zeros_like(terms[0][1])
    for coef, tpv in terms:
        total = total + coef * tpv
    return scale * total
