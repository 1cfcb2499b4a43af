"""Export a tuned soft prompt as a standard peft prompt-tuning adapter.

The adapter is what a researcher takes away: `PeftModel.from_pretrained(base, run_dir / "adapter")`
reproduces our prompt without any DTVG Studio code, for stage 1 and for stage 2's merged prompt alike.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from peft import PromptTuningConfig, TaskType, get_peft_model

from dtvg_engine.runs.atomic import new_file_mode
from dtvg_engine.runs.safefiles import make_dir
from dtvg_engine.train.backbones import Backbone


def adapter_config(backbone: Backbone, prompt_length: int) -> PromptTuningConfig:
    task_type = TaskType.SEQ_2_SEQ_LM if backbone.is_seq2seq else TaskType.CAUSAL_LM
    return PromptTuningConfig(
        task_type=task_type,
        num_virtual_tokens=prompt_length,
        token_dim=backbone.hidden_size,
        num_transformer_submodules=1,
        base_model_name_or_path=backbone.source,
    )


def export_adapter(backbone: Backbone, prompt: torch.Tensor, out_dir: Path) -> Path:
    """Write `prompt` [r, d] as a peft adapter folder; the backbone itself is left untouched.

    peft writes into a fresh folder beside `out_dir`, whose files then replace those of `out_dir`: a
    link left in `out_dir` (or `out_dir` itself a link) never leads a write out of the run folder.
    """
    peft_model = get_peft_model(backbone.model, adapter_config(backbone, prompt.shape[0]))
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(prompt)
    make_dir(out_dir)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}-", dir=out_dir.parent) as fresh:
        # no vocabulary check against the base model's hub config: a save never looks up the network
        peft_model.save_pretrained(fresh, save_embedding_layers=False)
        mode = new_file_mode(fresh)  # peft's weights file is 0600
        for written in Path(fresh).iterdir():
            os.chmod(written, mode)
            os.replace(written, out_dir / written.name)
    return out_dir
