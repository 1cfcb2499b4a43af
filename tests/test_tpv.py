"""Task prompt vector files, compatibility checks and arithmetic (TPV paper §3)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from dtvg_engine.errors import UserError
from dtvg_engine.method.tpv import (
    check_compatible,
    combine,
    load_tpv,
    load_tpv_numpy,
    parse_expression,
    save_tpv,
    task_prompt_vector,
)

META = {
    "task": "rte",
    "model": "smollm2-135m",
    "prompt_length": 100,
    "init_id": "smollm2-135m-r100-s0",
    "best_metric": 0.6875,
    "metric_name": "accuracy",
    "step": 1200,
    "run_id": "20250101-120000-stage1-rte",
}


def test_task_prompt_vector_is_difference():
    p_init, tuned = torch.randn(2, 3), torch.randn(2, 3)
    assert torch.equal(task_prompt_vector(tuned, p_init), tuned - p_init)


def test_save_load_roundtrip(tmp_path):
    tpv = torch.randn(4, 6)
    path = tmp_path / "run" / "tpv.safetensors"
    save_tpv(path, tpv, META)
    loaded, meta = load_tpv(path)
    assert torch.equal(loaded, tpv)
    assert meta == META
    assert isinstance(meta["prompt_length"], int) and isinstance(meta["best_metric"], float)
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_numpy_loader_equals_torch_loader(tmp_path):
    path = tmp_path / "tpv.safetensors"
    save_tpv(path, torch.randn(3, 5), META)
    array, meta_np = load_tpv_numpy(path)
    tensor, meta_pt = load_tpv(path)
    assert isinstance(array, np.ndarray)
    np.testing.assert_array_equal(array, tensor.numpy())
    assert meta_np == meta_pt


def test_numpy_loader_does_not_import_torch():
    code = "import sys, dtvg_engine.method.tpv_numpy; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_foreign_and_broken_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_tpv(tmp_path / "nope.safetensors")
    with pytest.raises(UserError, match="not found"):
        load_tpv_numpy(tmp_path / "nope.safetensors")
    foreign = tmp_path / "prompt.safetensors"
    save_file({"prompt": torch.zeros(2, 2)}, foreign)
    with pytest.raises(UserError, match="no 'tpv' tensor"):
        load_tpv(foreign)
    with pytest.raises(UserError, match="no 'tpv' tensor"):
        load_tpv_numpy(foreign)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file at all")
    with pytest.raises(UserError, match="not a readable"):
        load_tpv(broken)


def test_foreign_metadata_stays_a_string(tmp_path):
    path = tmp_path / "tpv.safetensors"
    save_file({"tpv": torch.zeros(1, 1)}, path, metadata={"format": "pt", "step": "7"})
    _, meta = load_tpv(path)
    assert meta == {"format": "pt", "step": 7}


def test_check_compatible():
    same = dict(META, task="mnli", run_id="r2")
    check_compatible([META, same])
    check_compatible([])
    other = dict(META, task="mnli", model="tiny-llama", prompt_length=8, init_id="tiny-llama-r8-s0")
    with pytest.raises(UserError) as err:
        check_compatible([META, same, other])
    assert str(err.value) == (
        "TPVs come from different initializations: rte (init smollm2-135m-r100-s0) vs "
        "mnli (init tiny-llama-r8-s0); tune both from the same --model/--prompt-length/--init-seed"
    )


def test_check_compatible_names_runs_of_the_same_task():
    other = dict(META, run_id="r2", prompt_length=8)
    with pytest.raises(UserError, match=r"rte \[run 20250101-120000-stage1-rte\] \(prompt length 100\)"):
        check_compatible([META, other])


@pytest.mark.parametrize(
    ("expr", "terms"),
    [
        ("mnli + qnli - sst2", [(1.0, "mnli"), (1.0, "qnli"), (-1.0, "sst2")]),
        ("0.5*mnli + qnli", [(0.5, "mnli"), (1.0, "qnli")]),
        ("-sst2", [(-1.0, "sst2")]),
        ("  -0.25 * mnli+qnli  ", [(-0.25, "mnli"), (1.0, "qnli")]),
        ("mnli -qnli", [(1.0, "mnli"), (-1.0, "qnli")]),
        ("2*20250101-120000-stage1-rte", [(2.0, "20250101-120000-stage1-rte")]),
        ("super_glue.boolq - 1e-3*x", [(1.0, "super_glue.boolq"), (-0.001, "x")]),
        ("mnli-qnli", [(1.0, "mnli-qnli")]),  # one name: a binary minus needs a space before it
    ],
)
def test_parse_expression(expr, terms):
    assert parse_expression(expr) == terms


@pytest.mark.parametrize(
    ("expr", "position"),
    [
        ("", None),
        ("   ", None),
        ("mnli +", 6),
        ("mnli + + qnli", 7),
        ("mnli qnli", 5),
        ("mnli*2", 0),
        ("0.5*", 4),
        ("inf*mnli", 0),
        ("mnli & qnli", 5),
        ("--mnli", 1),
    ],
)
def test_parse_expression_errors(expr, position):
    with pytest.raises(UserError) as err:
        parse_expression(expr)
    message = str(err.value)
    assert "\n" not in message and "0.5*mnli + qnli - sst2" in message
    if position is not None:
        assert f"at position {position} " in message


def test_combine():
    a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]])
    assert torch.equal(combine([(1.0, a), (-1.0, b)]), torch.tensor([[-2.0, 3.0]]))
    # 2 · (0.5 · (1, 2) + (3, -1)) = 2 · (3.5, 0) = (7, 0)
    assert torch.equal(combine([(0.5, a), (1.0, b)], scale=2.0), torch.tensor([[7.0, 0.0]]))
    with pytest.raises(UserError):
        combine([])
    with pytest.raises(UserError, match="different shapes"):
        combine([(1.0, a), (1.0, torch.zeros(2, 2))])
