"""The shared soft-prompt initialization P_init: one file per (model, length, seed).

docs/architecture.md, 'Run folder'.
"""

from __future__ import annotations

import pytest
import torch
from cli_helpers import assert_bad_input, dtvg
from safetensors import safe_open
from safetensors.torch import save_file

from dtvg_engine.errors import UserError
from dtvg_engine.train.prompts import TOP_VOCAB, init_id, sample_init, shared_init


def _token_ids(backbone, prompt: torch.Tensor) -> list[int]:
    """The vocabulary id whose embedding row equals each prompt row (-1 when none does)."""
    weight = backbone.model.get_input_embeddings().weight.detach()
    ids = []
    for row in prompt:
        hits = (weight == row).all(dim=1).nonzero().flatten().tolist()
        ids.append(hits[0] if hits else -1)
    return ids


def test_shared_init_is_created_once_under_inits(runs_dir, llama):
    prompt, ident = shared_init(runs_dir, llama, 8, 0)
    path = runs_dir / "_inits" / "tiny-llama-r8-s0.safetensors"
    assert ident == "tiny-llama-r8-s0" == init_id(llama.name, 8, 0)
    assert path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left
    assert prompt.shape == (8, llama.hidden_size) and prompt.dtype == torch.float32
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"model": "tiny-llama", "prompt_length": "8", "init_seed": "0"}
    mtime = path.stat().st_mtime_ns

    again, ident2 = shared_init(runs_dir, llama, 8, 0)
    assert ident2 == ident
    assert torch.equal(again, prompt)
    assert path.stat().st_mtime_ns == mtime  # not rewritten


def test_shared_init_reads_the_existing_file(runs_dir, llama):
    """Once the file exists it is THE init: a later call loads it rather than sampling anew."""
    shared_init(runs_dir, llama, 4, 0)
    path = runs_dir / "_inits" / "tiny-llama-r4-s0.safetensors"
    marker = torch.full((4, llama.hidden_size), 0.25)
    save_file({"prompt": marker}, str(path))
    loaded, _ = shared_init(runs_dir, llama, 4, 0)
    assert torch.equal(loaded, marker)


@pytest.mark.parametrize("model", ["llama", "t5"])
def test_init_rows_are_embeddings_of_frequent_non_special_tokens(model, request, runs_dir):
    backbone = request.getfixturevalue(model)
    prompt, _ = shared_init(runs_dir, backbone, 16, 3)
    ids = _token_ids(backbone, prompt)
    special = set(backbone.tokenizer.all_special_ids)
    assert -1 not in ids, "every row must be a row of the embedding matrix"
    assert all(i < TOP_VOCAB + len(special) for i in ids)
    assert not special & set(ids)
    assert len(set(ids)) == len(ids)  # distinct tokens


def test_init_seeds_differ_and_are_reproducible(tmp_path, llama):
    a, id_a = shared_init(tmp_path / "a", llama, 6, 0)
    b, id_b = shared_init(tmp_path / "a", llama, 6, 1)
    assert id_a != id_b
    assert not torch.equal(a, b)
    again, _ = shared_init(tmp_path / "elsewhere", llama, 6, 0)  # a fresh runs dir samples the same
    assert torch.equal(a, again)
    assert torch.equal(sample_init(llama, 6, 1), b)


def test_init_depends_on_prompt_length_and_model(runs_dir, llama, t5):
    short, id_short = shared_init(runs_dir, llama, 4, 0)
    long, id_long = shared_init(runs_dir, llama, 8, 0)
    other, id_other = shared_init(runs_dir, t5, 4, 0)
    assert len({id_short, id_long, id_other}) == 3
    assert short.shape[0] == 4 and long.shape[0] == 8
    assert id_other == "tiny-t5-r4-s0"
    names = sorted(p.name for p in (runs_dir / "_inits").iterdir())
    assert names == [f"{i}.safetensors" for i in sorted([id_short, id_long, id_other])]


# ----- a damaged shared init (issue 24) -----


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_shared_init_is_one_line_naming_it_and_the_fix(runs_dir, llama, data_dir, damage):
    """A damaged `_inits` file failed the run with "SafetensorError: header too large", naming neither
    the file nor the fix; now `dtvg run` refuses it in one line (exit 2, no run), and the fix it names,
    deleting the file, samples the same P_init again."""
    prompt, ident = shared_init(runs_dir, llama, 8, 0)
    prompt = prompt.clone()  # not the file's memory map, which the damage below changes
    path = runs_dir / "_inits" / f"{ident}.safetensors"
    original = path.read_bytes()
    path.write_bytes(b"garbage\n" if damage == "garbage" else original[: len(original) // 2])
    result = dtvg(
        "run", "stage1", "rte", "--model", "tiny-llama", "--prompt-length", 8, "--steps", 2, "--k-shot", 4,
        "--runs-dir", runs_dir, "--data-dir", data_dir,
    )  # fmt: skip
    line = assert_bad_input(result)
    assert str(path) in line and "delete this damaged shared init" in line, line
    assert sorted(p.name for p in runs_dir.iterdir() if p.name != "history.json") == ["_inits"]  # no run
    with pytest.raises(UserError, match="delete this damaged shared init"):  # a worker started anyway
        shared_init(runs_dir, llama, 8, 0)
    path.unlink()
    assert torch.equal(shared_init(runs_dir, llama, 8, 0)[0], prompt)
