"""The task-similarity matrix of stage-1 task prompt vectors (DTVG eq. 2), without torch.

`sim(T1, T2) = (1/r²) (Σ_i v_i¹)ᵀ (Σ_j v_j²)`: the dot product of the token-summed vectors over r².
Vectors are read with safetensors' numpy API (`dtvg_engine.method.tpv_numpy`); numpy is imported lazily so the
dashboard's start does not pay for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dtvg_engine.errors import UserError
from dtvg_engine.runs.runfolder import TPV


def similarity_matrix(vectors: list[Any]) -> list[list[float]]:
    """Pairwise eq.-2 similarities of `[r, d]` arrays (all of the same shape)."""
    import numpy as np

    if not vectors:
        return []
    shapes = {tuple(v.shape) for v in vectors}
    if len(shapes) != 1:
        raise UserError(
            f"task prompt vectors of different shapes {sorted(shapes)}: they come from different inits"
        )
    r = vectors[0].shape[0]
    sums = np.stack([np.asarray(v, dtype=np.float64).sum(axis=0) for v in vectors])
    return ((sums @ sums.T) / (r * r)).tolist()


def stage1_tpvs(config: dict[str, Any], runs_dir: Path) -> dict[str, Path]:
    """Task → tpv.safetensors of the stage-1 runs a stage-2 config names (target first when it has one).

    `stage1_runs` names runs by id, found in the stage-2 run's own runs directory; `bank_sources` names
    the sources whose vectors came from the source bank (`dtvg_engine.method.bank`).
    """
    from dtvg_engine.method import bank

    runs = config.get("stage1_runs") or {}
    files = {task: Path(runs_dir) / Path(run_id).name / TPV for task, run_id in runs.items()}
    for task, shipped in (config.get("bank_sources") or {}).items():
        files[task] = bank.named(task, shipped).path
    target = config.get("target")
    return {task: files[task] for task in sorted(files, key=lambda task: (task != target, task))}


def load_matrix(config: dict[str, Any], runs_dir: Path) -> tuple[list[str], list[list[float]]]:
    """Names and similarity matrix of the run's stage-1 vectors (UserError when a file is missing)."""
    from dtvg_engine.method.tpv_numpy import load_tpv_numpy

    paths = stage1_tpvs(config, runs_dir)
    if not paths:
        raise UserError("this run's config names no stage-1 runs (stage1_runs): no vectors to compare")
    vectors = [load_tpv_numpy(path)[0] for path in paths.values()]
    return list(paths), similarity_matrix(vectors)
