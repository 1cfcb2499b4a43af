"""The shared soft-prompt initialization P_init (DESIGN §3, DTVG Appendix C.8).

Every task of a study is tuned from the same P_init: r rows sampled from the embeddings of the top-5000
vocabulary tokens. It is stored once per (model, prompt length, init seed) under `runs/_inits/`, and its
file name is the init id every TPV records, so vectors from different inits are never mixed.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dtvg_engine.backbones import Backbone
from dtvg_engine.bank import ensure_init
from dtvg_engine.config import init_id
from dtvg_engine.runfolder import INITS_DIR, replacing
from dtvg_engine.safefiles import make_dir, regular_file

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
    path = Path(runs_dir) / INITS_DIR / f"{ident}.safetensors"
    if not os.path.lexists(path):
        Path(runs_dir).mkdir(parents=True, exist_ok=True)
        make_dir(path.parent)
        prompt = sample_init(backbone, prompt_length, init_seed)
        meta = {"model": backbone.name, "prompt_length": str(prompt_length), "init_seed": str(init_seed)}
        with replacing(path) as tmp:  # parallel workers write identical bytes; the last rename wins
            save_file({"prompt": prompt}, tmp, metadata=meta)
    return load_file(regular_file(path))["prompt"], ident
