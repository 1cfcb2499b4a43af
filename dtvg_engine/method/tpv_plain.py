"""Task prompt vectors read with the standard library only, and their DTVG eq.-2 similarity matrix.

The dashboard's study view shows the similarity of a study's stage-1 vectors, and must not import torch
(nor numpy: it starts in well under a second). A safetensors file is simple enough to read by hand: an
8-byte little-endian header length, a JSON header naming each tensor's dtype, shape and byte range, then
the raw little-endian buffers. The vectors are small ([r, d], e.g. 100 × 576), so summing their tokens in
plain Python takes milliseconds. `grouping.similarity_matrix` is the torch version the engine uses; both
compute eq. 2 from the token sums, and a test checks that they agree.
"""

from __future__ import annotations

import struct
import sys
from array import array
from pathlib import Path

from dtvg_engine.errors import UserError
from dtvg_engine.runs.safefiles import open_file, parse_json

_HEADER_LIMIT = 100 << 20
"""The largest header accepted (safetensors' own limit): a bigger length means a damaged file."""

_FLOAT_CODES = {"F64": "d", "F32": "f"}
"""safetensors dtypes `array` reads directly."""


def _floats(raw: bytes, dtype: str) -> array:
    """The little-endian buffer `raw` of `dtype` as an array of floats (in this machine's byte order)."""
    big_endian = sys.byteorder == "big"
    if dtype == "F16":
        return array("f", struct.unpack(f"<{len(raw) // 2}e", raw))
    if dtype == "BF16":  # the upper half of a float32: widen each value to 32 bits
        halves = array("H", raw)
        if big_endian:
            halves.byteswap()
        return array("f", array("I", (h << 16 for h in halves)).tobytes())
    if dtype not in _FLOAT_CODES:
        raise ValueError(f"dtype {dtype} is not a float type")
    values = array(_FLOAT_CODES[dtype], raw)
    if big_endian:
        values.byteswap()
    return values


TPV_FIX = "pass the tpv.safetensors of a finished stage-1 run"


def read_tensor(path: str | Path, key: str, fix: str = TPV_FIX) -> tuple[list[int], array]:
    """The shape and the flat row-major values of tensor `key` of a safetensors file.

    `UserError` naming the file when it is missing, damaged, or has no float tensor `key`, ending with
    `fix`, what to do about it.
    """
    path = Path(path)
    try:
        with open_file(path) as f:
            head = f.read(8)
            length = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            if not 0 < length <= _HEADER_LIMIT:
                raise UserError(f"{path} is not a safetensors file (no header); {fix}")
            header = parse_json(f.read(length))
            entry = header.get(key) if isinstance(header, dict) else None
            if not isinstance(entry, dict):
                raise UserError(f"{path} has no {key!r} tensor; {fix}")
            start, end = entry["data_offsets"]
            shape = [int(n) for n in entry["shape"]]
            f.seek(8 + length + start)
            raw = f.read(end - start)
        values = _floats(raw, entry["dtype"])
    except FileNotFoundError:
        raise UserError(f"task prompt vector file not found: {path}; {fix}") from None
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror}); {fix}") from None
    except (ValueError, KeyError, TypeError) as e:  # bad JSON, fields, dtype or buffer size
        raise UserError(f"{path} is not a readable safetensors file ({e}); {fix}") from None
    count = 1
    for n in shape:
        count *= n
    if len(values) != count:
        raise UserError(f"{path}: tensor {key!r} holds {len(values)} values for shape {shape}; {fix}")
    return shape, values


def token_sum(path: str | Path) -> tuple[int, list[float]]:
    """The prompt length r and the token sum Σ_i v_i (a d-vector) of the TPV in `path` (key "tpv")."""
    shape, values = read_tensor(path, "tpv")
    if len(shape) != 2:
        raise UserError(f"{path}: a task prompt vector is [r, d], this one has shape {shape}")
    r, d = shape
    sums = [0.0] * d
    for i in range(r):
        row = values[i * d : (i + 1) * d]
        sums = [s + v for s, v in zip(sums, row, strict=True)]
    return r, sums


def similarity_matrix(paths: dict[str, Path]) -> tuple[list[str], list[list[float]]]:
    """Names and DTVG eq.-2 similarities `sim(T1, T2) = (1/r²) (Σ_i v_i¹)ᵀ (Σ_j v_j²)` of named TPV files.

    Vectors of different shapes come from different initializations: refused, as the engine refuses them.
    """
    names = list(paths)
    sums = {name: token_sum(paths[name]) for name in names}
    shapes = {(r, len(s)) for r, s in sums.values()}
    if len(shapes) > 1:
        raise UserError(
            f"task prompt vectors of different shapes {sorted(shapes)}: they come from different inits"
        )
    matrix = []
    for a in names:
        r, s_a = sums[a]
        matrix.append([sum(x * y for x, y in zip(s_a, sums[b][1], strict=True)) / r**2 for b in names])
    return names, matrix
