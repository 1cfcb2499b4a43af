"""Backbones: built-in tiny models, models by local path, names, devices and the cache dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_bad_input, dtvg

from dtvg_engine.errors import UserError
from dtvg_engine.train import backbones
from dtvg_engine.train.backbones import (
    cache_dir,
    check_model_name,
    load_backbone,
    load_tokenizer,
    resolve_device,
)


def test_tiny_llama_is_a_frozen_causal_lm(llama):
    assert not llama.is_seq2seq
    assert llama.hidden_size == 64
    assert llama.device == torch.device("cpu")
    assert not llama.model.training
    assert not any(p.requires_grad for p in llama.model.parameters())
    assert llama.model.get_input_embeddings().weight.shape[0] == backbones.TINY_VOCAB
    assert llama.tokenizer.pad_token_id is not None
    assert llama.slug == "tiny-llama" and llama.source == "tiny-llama"
    ids = torch.tensor([[5, 17, 300]])
    assert torch.equal(llama.embed(ids), llama.model.get_input_embeddings().weight[ids])


def test_tiny_t5_is_a_frozen_seq2seq_lm_sharing_the_tokenizer(t5, llama):
    assert t5.is_seq2seq
    assert t5.hidden_size == 64
    assert not any(p.requires_grad for p in t5.model.parameters())
    assert t5.model.config.decoder_start_token_id == t5.tokenizer.pad_token_id
    assert t5.tokenizer("Answer: yes").input_ids == llama.tokenizer("Answer: yes").input_ids


def test_tiny_models_are_the_same_on_every_load(llama, t5):
    """Seeded weights: a run's worker and a test loading the model later see the same network."""
    for backbone in (llama, t5):
        again = load_backbone(backbone.name, "cpu")
        for (name, a), (_, b) in zip(
            backbone.model.state_dict().items(), again.model.state_dict().items(), strict=True
        ):
            assert torch.equal(a, b), name
    before = torch.random.get_rng_state()
    load_backbone("tiny-llama", "cpu")
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is left alone


def test_model_from_a_local_folder(tmp_path, llama):
    folder = tmp_path / "my-model"
    llama.model.save_pretrained(folder)
    llama.tokenizer.save_pretrained(folder)
    loaded = load_backbone(str(folder), "cpu")
    assert not loaded.is_seq2seq
    assert loaded.source == str(folder)
    assert loaded.slug == "".join(c if c.isalnum() or c in "-." else "-" for c in str(folder).lower()).strip(
        "-"
    )
    ids = torch.tensor([[1, 20, 300, 4000]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, llama.model(ids).logits)


def test_a_local_folder_that_is_not_a_model_is_a_user_error(tmp_path):
    """A folder without a model config must give a one-line UserError, not a library ValueError."""
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(UserError, match="not-a-model"):
        load_backbone(str(folder), "cpu")


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-t5", "smollm2-135m", "HuggingFaceTB/SmolLM2-135M"])
def test_accepted_model_names(name):
    check_model_name(name)


@pytest.mark.parametrize("name", ["nosuchmodel", "./missing/folder", "/no/such/model", "~/nope"])
def test_refused_model_names(name):
    with pytest.raises(UserError, match="unknown model"):
        check_model_name(name)


def test_existing_local_folder_is_an_accepted_name(tmp_path):
    check_model_name(str(tmp_path))


def test_slug_is_filesystem_safe(llama):
    llama_like = backbones.Backbone(
        "Org/My Model_v2", llama.model, llama.tokenizer, False, llama.device, "x", llama.init_embeddings
    )
    assert llama_like.slug == "org-my-model-v2"


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == torch.device(expected)
    with pytest.raises(UserError, match="unknown device"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no GPU"):
            resolve_device("cuda")


def test_cache_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DTVG_CACHE_DIR", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("DTVG_CACHE_DIR")
    assert cache_dir().name == "dtvg-studio"


@pytest.mark.parametrize("blocked", ["read-only", "a file in the way"])
def test_an_unwritable_model_cache_is_one_line_naming_it_and_the_fix(tmp_path, data_dir, blocked):
    """A read-only DTVG_CACHE_DIR (or home) failed the run with a PermissionError naming neither the
    folder nor the fix; now `dtvg run` refuses it in one line (exit 2, no run), and so does a worker."""
    if blocked == "read-only":  # root writes through permissions: /sys refuses even root
        cache = tmp_path / "ro" if os.geteuid() else Path("/sys/dtvg-cache")
        if os.geteuid():
            cache.mkdir(mode=0o555)
    else:
        (tmp_path / "file").write_text("")
        cache = tmp_path / "file" / "cache"
    env = {**os.environ, "DTVG_CACHE_DIR": str(cache)}
    runs = tmp_path / "runs"
    result = dtvg(
        "run", "stage1", "rte", "--model", "tiny-llama", "--steps", 2, "--k-shot", 4,
        "--runs-dir", runs, "--data-dir", data_dir, env=env,
    )  # fmt: skip
    line = assert_bad_input(result)
    assert f"the model cache {cache}" in line and "set DTVG_CACHE_DIR to a writable folder" in line, line
    assert not runs.exists() or not any(p.name.startswith("2") for p in runs.iterdir())
    with pytest.MonkeyPatch.context() as patch:  # a worker started anyway (by hand, on another node)
        patch.setenv("DTVG_CACHE_DIR", str(cache))
        with pytest.raises(UserError, match="set DTVG_CACHE_DIR to a writable folder"):
            load_tokenizer("tiny-llama")
