"""The shared soft-prompt initialization P_init (docs/architecture.md, 'Run folder'; DTVG Appendix C.8).

Every task of a study is tuned from the same P_init: r rows sampled from the embeddings of the top-5000
vocabulary tokens. It is stored once per (model, prompt length, init seed) under `runs/_inits/`, and its
file name is the init id every TPV records, so vectors from different inits are never mixed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dtvg_engine.config import init_id
from dtvg_engine.errors import UserError
from dtvg_engine.method.bank import ensure_init, sha256_of
from dtvg_engine.runs.atomic import replacing, write_json_atomic
from dtvg_engine.runs.runfolder import CONFIG, INITS_DIR, read_config
from dtvg_engine.runs.safefiles import make_dir, regular_file
from dtvg_engine.train.backbones import Backbone

TOP_VOCAB = 5000
"""P_init rows are drawn from the embeddings of this many most frequent tokens (lowest ids)."""


def sample_init(backbone: Backbone, prompt_length: int, init_seed: int) -> torch.Tensor:
    """r embedding rows of distinct non-special tokens among the top-5000 ids, seeded.

    Byte-level BPE and SentencePiece vocabularies both give frequent tokens low ids, so the lowest
    5000 non-special ids stand in for "the top-5000 vocabulary words" of the papers.
    """
    special = set(backbone.tokenizer.all_special_ids)
    candidates = torch.tensor([i for i in range(TOP_VOCAB + len(special)) if i not in special][:TOP_VOCAB])
    generator = torch.Generator().manual_seed(init_seed)
    replace = prompt_length > len(candidates)
    picks = torch.multinomial(
        torch.ones(len(candidates)), prompt_length, replacement=replace, generator=generator
    )
    weight = backbone.init_embeddings  # fp32 in every precision, so P_init is too
    return weight[candidates[picks].to(weight.device)].detach().cpu().clone()


def shared_init(
    runs_dir: Path, backbone: Backbone, prompt_length: int, init_seed: int
) -> tuple[torch.Tensor, str]:
    """Load P_init for these settings, creating it on first use; returns (P_init [r, d], init id).

    When the source bank has vectors of this init, P_init is the bank's (copied on first use; a
    different local one is refused), so target prompts tune from the init the bank's TPVs came from.
    """
    ident = init_id(backbone.name, prompt_length, init_seed)
    ensure_init(Path(runs_dir), ident)
    path = init_file(runs_dir, ident)
    if not os.path.lexists(path):
        Path(runs_dir).mkdir(parents=True, exist_ok=True)
        make_dir(path.parent)
        prompt = sample_init(backbone, prompt_length, init_seed)
        meta = {"model": backbone.name, "prompt_length": str(prompt_length), "init_seed": str(init_seed)}
        with replacing(path) as tmp:  # parallel workers write identical bytes; the last rename wins
            save_file({"prompt": prompt}, tmp, metadata=meta)
    return load_file(regular_file(path))["prompt"], ident


INIT_SHA256 = "init_sha256"
"""The key under which a run's config.json and a stage-1 TPV's metadata record the sha256 of the shared
init file the run tuned from: a P_init changed since (overwritten in `_inits/`) is refused, never
silently subtracted from a prompt tuned from another one."""


def init_file(runs_dir: Path, ident: str) -> Path:
    """Where the runs directory keeps shared init `ident`."""
    return Path(runs_dir) / INITS_DIR / f"{ident}.safetensors"


def pin_init(run_dir: Path, ident: str) -> str:
    """The sha256 of the shared init the run tunes from: recorded in its config.json at its first start,
    checked at every later one (a resume); `UserError` when the file changed in between."""
    path = init_file(run_dir.parent, ident)
    actual = sha256_of(regular_file(path))
    config = read_config(run_dir)
    recorded = config.get(INIT_SHA256)
    if recorded is None:
        write_json_atomic(run_dir / CONFIG, {**config, INIT_SHA256: actual})
    elif recorded != actual:
        raise UserError(
            f"the shared init {path} changed since run {run_dir.name} started from it (sha256 "
            f"{actual[:12]}…, the run recorded {recorded[:12]}…); put the original back, or start a new run"
        )
    return actual


def check_tpv_init(runs_dir: Path, meta: dict[str, Any]) -> None:
    """`UserError` when a task prompt vector records the sha256 of its init (`meta`, from `load_tpv`)
    and the runs directory's init file is another one; vectors made before it was recorded pass."""
    recorded = meta.get(INIT_SHA256)
    if recorded is None:
        return
    path = init_file(runs_dir, str(meta.get("init_id")))
    actual = sha256_of(regular_file(path))
    if actual != recorded:
        raise UserError(
            f"the shared init {path} changed since the {meta.get('task')} vector of run {meta.get('run_id')} "
            f"was made from it (sha256 {actual[:12]}…, the vector recorded {recorded[:12]}…); put the "
            "original back, or tune that run again"
        )
