"""`--precision auto|fp32|bf16` (issue 13): the frozen model computes in bf16, while the soft prompt, its
gradient, P_init, the LM head's logits and the loss stay fp32; `auto` is fp32 on a CPU unless the
measured comparison allowed bf16 there (backbones.CPU_BF16_AUTO)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from dtvg_engine.config import stage1_config
from dtvg_engine.errors import UserError
from dtvg_engine.runs.runfolder import list_run_dirs, read_config
from dtvg_engine.train import backbones
from dtvg_engine.train.backbones import load_backbone, resolve_precision
from dtvg_engine.train.data import load_splits
from dtvg_engine.train.prompts import sample_init
from dtvg_engine.train.scoring import LabelScorer
from dtvg_engine.train.tasks import get_task

CPU = torch.device("cpu")


def test_resolve_precision_on_cpu(monkeypatch):
    assert resolve_precision("fp32", CPU) == torch.float32
    assert resolve_precision("bf16", CPU) == torch.bfloat16
    monkeypatch.setattr(backbones, "CPU_BF16_AUTO", False)
    assert resolve_precision("auto", CPU) == torch.float32
    monkeypatch.setattr(backbones, "CPU_BF16_AUTO", True)  # allowed: bf16 only where the CPU has it
    native = backbones.native_cpu_bf16()
    assert resolve_precision("auto", CPU) == (torch.bfloat16 if native else torch.float32)
    with pytest.raises(UserError, match="--precision auto, fp32, bf16"):
        resolve_precision("fp16", CPU)


def test_an_unknown_precision_is_refused_before_any_run():
    with pytest.raises(UserError, match="--precision must be one of auto, fp32, bf16"):
        stage1_config("rte", precision="fp16")
    with pytest.raises(UserError, match="--eval-order must be one of length, data"):
        stage1_config("rte", eval_order="random")


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-t5"])
def test_bf16_body_with_fp32_head_prompt_and_init(name, data_dir):
    fp32, bf16 = load_backbone(name, "cpu", "fp32"), load_backbone(name, "cpu", "bf16")
    assert bf16.dtype == torch.bfloat16 and fp32.dtype == torch.float32
    assert bf16.model.get_output_embeddings().weight.dtype == torch.float32
    assert not any(p.requires_grad for p in bf16.model.parameters())
    # P_init is sampled from the fp32 embeddings in both, so every precision starts from the same prompt
    assert torch.equal(sample_init(bf16, 8, 0), sample_init(fp32, 8, 0))

    rows = load_splits("rte", data_dir, seed=0, k_shot=16, max_eval=16).train[:8]
    results = {}
    for backbone in (fp32, bf16):
        scorer = LabelScorer(backbone, get_task("rte"), 128)
        batch = scorer.collate(scorer.encode(rows))
        prompt = sample_init(backbone, 8, 0).requires_grad_(True)
        logits = scorer.answer_logits(prompt, batch)
        loss = scorer.loss(prompt, batch)
        loss.backward()
        assert logits.dtype == torch.float32 and loss.dtype == torch.float32
        assert prompt.grad.dtype == torch.float32
        results[backbone.dtype] = loss.item(), prompt.grad.flatten()
    (loss32, grad32), (loss16, grad16) = results[torch.float32], results[torch.bfloat16]
    assert abs(loss16 - loss32) < 0.05
    assert F.cosine_similarity(grad16, grad32, dim=0) > 0.95


def test_a_bf16_run_logs_its_precision_and_threads(runs_dir, data_dir):
    args = ["run", "stage1", "rte", "--model", "tiny-llama", "--prompt-length", "4", "--k-shot", "16"]
    args += ["--max-eval", "16", "--steps", "2", "--eval-every", "2", "--device", "cpu"]
    args += ["--precision", "bf16", "--runs-dir", str(runs_dir), "--data-dir", str(data_dir)]
    done = subprocess.run([sys.executable, "-m", "dtvg_engine.cli", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    (run_dir,) = list_run_dirs(runs_dir)
    assert read_config(run_dir)["precision"] == "bf16"
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    logs = [e["message"] for e in events if e["type"] == "log"]
    assert any("tiny-llama on cpu in bfloat16 (--precision bf16)" in m for m in logs), logs
    finished = events[-1]
    assert finished["type"] == "run_finished" and finished["status"] == "completed"
