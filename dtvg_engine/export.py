"""Export a tuned soft prompt as a standard peft prompt-tuning adapter.

The adapter is what a researcher takes away: `PeftModel.from_pretrained(base, run_dir / "adapter")`
reproduces our prompt without any DTVG Studio code, for stage 1 and for stage 2's merged prompt alike.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PromptTuningConfig, TaskType, get_peft_model

from dtvg_engine.backbones import Backbone


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
    """Write `prompt` [r, d] as a peft adapter folder; the backbone itself is left untouched."""
    peft_model = get_peft_model(backbone.model, adapter_config(backbone, prompt.shape[0]))
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(prompt)
    peft_model.save_pretrained(out_dir)
    return out_dir
