"""Read a task prompt vector file without torch (standard library, numpy and safetensors only).

The terminal UI uses this for its similarity heatmap; importing it must never import torch.
File format (written by ``dtvg_engine.method.tpv.save_tpv``): one tensor under key ``"tpv"`` of shape [r, d],
and safetensors metadata whose values are JSON-encoded (safetensors metadata is str → str).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

from dtvg_engine.errors import UserError
from dtvg_engine.runs.safefiles import parse_json, regular_file

TPV_KEY = "tpv"


def encode_metadata(metadata: dict[str, str | int | float | None]) -> dict[str, str]:
    """JSON-encode every value so that it fits safetensors' str → str metadata."""
    return {str(key): json.dumps(value) for key, value in metadata.items()}


def decode_metadata(raw: dict[str, str] | None) -> dict[str, str | int | float | None]:
    """Inverse of ``encode_metadata``; a value that is not JSON (a file written elsewhere) stays a string."""
    decoded: dict[str, str | int | float | None] = {}
    for key, value in (raw or {}).items():
        try:
            decoded[key] = parse_json(value)
        except ValueError:
            decoded[key] = value
    return decoded


def load_tpv_numpy(path: str | Path) -> tuple[np.ndarray, dict[str, str | int | float | None]]:
    """The ``[r, d]`` TPV as a numpy array and its decoded metadata (UserError: missing or foreign file)."""
    return read_tpv_file(path, framework="np")


def read_tpv_file(path: str | Path, framework: str) -> tuple[Any, dict[str, str | int | float | None]]:
    """The ``"tpv"`` tensor of a file as ``framework`` ("np" or "pt") sees it, and its decoded metadata."""
    path = Path(path)
    fix = "pass the tpv.safetensors of a finished stage-1 run"
    if not path.is_file():
        raise UserError(f"task prompt vector file not found: {path}; {fix}")
    regular_file(path)  # not a link (out of the runs directory), not a device
    try:
        with safe_open(str(path), framework=framework) as handle:
            if TPV_KEY not in handle.keys():
                raise UserError(f"{path} has no {TPV_KEY!r} tensor; {fix}")
            return handle.get_tensor(TPV_KEY), decode_metadata(handle.metadata())
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{path} is not a readable safetensors file ({exc}); {fix}") from exc
