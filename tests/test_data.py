"""Loading and splitting real task data: split rules, k-shot sampling, caps, bundled copies, bad input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from dtvg_engine.errors import UserError
from dtvg_engine.train.data import BUNDLED_DATA_DIR, allocate, default_data_dir, load_splits
from dtvg_engine.train.tasks import TASKS, target_id


def idxs(rows: list[dict]) -> set[int]:
    return {row["idx"] for row in rows}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


RTE_ROWS = [{"sentence1": f"A {i}.", "sentence2": f"B {i}.", "label": i % 2, "idx": i} for i in range(10)]


def test_small_task_halves_the_validation_file(data_dir: Path) -> None:
    splits = load_splits("rte", data_dir, seed=0)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (2490, 138, 139)
    assert not idxs(splits.validation) & idxs(splits.test)
    assert splits.split_info["sizes"] == {"train": 2490, "validation": 138, "test": 139}
    assert splits.split_info["rule"].startswith("small")
    json.dumps(splits.split_info)


def test_split_is_seeded(data_dir: Path) -> None:
    first, again, other = (load_splits("rte", data_dir, seed=s) for s in (0, 0, 1))
    assert first.validation == again.validation and first.test == again.test
    assert first.validation != other.validation


def test_large_task_holds_out_1000_train_rows(data_dir: Path) -> None:
    splits = load_splits("sst2", data_dir, seed=0)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (19000, 1000, 872)
    assert not idxs(splits.train) & idxs(splits.validation)
    assert splits.split_info["held_out"] == 1000
    other = load_splits("sst2", data_dir, seed=1)
    assert idxs(other.validation) != idxs(splits.validation) and other.test == splits.test


def test_labels_are_mapped(data_dir: Path) -> None:
    scitail = load_splits("scitail", data_dir, need_train=False)
    assert scitail.train == [] and {row["label"] for row in scitail.validation} == {0, 1}
    stsb = load_splits("stsb", data_dir, max_eval=50)
    assert all(isinstance(row["label"], float) for row in stsb.train[:50])


def test_k_shot_keeps_class_proportions_and_is_seeded(data_dir: Path) -> None:
    splits = load_splits("cb", data_dir, k_shot=32, seed=0)  # cb train is 115 / 119 / 16
    assert Counter(row["label"] for row in splits.train) == {0: 15, 1: 15, 2: 2}
    assert splits.split_info["k_shot_counts"] == {"0": 15, "1": 15, "2": 2}
    assert load_splits("cb", data_dir, k_shot=32, seed=0).train == splits.train
    assert idxs(load_splits("cb", data_dir, k_shot=32, seed=1).train) != idxs(splits.train)


def test_k_shot_on_stsb_stratifies_rounded_scores(data_dir: Path) -> None:
    splits = load_splits("stsb", data_dir, k_shot=12, seed=0)
    assert len(splits.train) == 12
    assert {target_id(TASKS["stsb"], row["label"]) for row in splits.train} == set(range(6))


def test_allocation_gives_every_class_a_row_when_possible() -> None:
    assert allocate(Counter({0: 115, 1: 119, 2: 16}), 3) == {0: 1, 1: 1, 2: 1}
    assert allocate(Counter({0: 115, 1: 119, 2: 16}), 2) == {0: 1, 1: 1, 2: 0}
    assert sum(allocate(Counter({0: 7, 1: 2, 2: 1}), 7).values()) == 7


def test_max_eval_caps_validation_and_test(data_dir: Path) -> None:
    splits = load_splits("mnli", data_dir, max_eval=100, seed=0)
    assert (len(splits.validation), len(splits.test)) == (100, 100)
    assert splits.split_info["max_eval"] == 100


def test_bundled_copies_use_the_20_percent_hold_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DTVG_DATA_DIR", raising=False)
    assert default_data_dir() == BUNDLED_DATA_DIR
    splits = load_splits("sst2", default_data_dir())
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (240, 60, 200)
    assert splits.split_info["held_out"] == 60
    rte = load_splits("rte", default_data_dir())
    assert (len(rte.validation), len(rte.test)) == (100, 100)
    bundled_bytes = sum(f.stat().st_size for f in BUNDLED_DATA_DIR.rglob("*.jsonl"))
    assert bundled_bytes < 1_000_000


def test_default_data_dir_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DTVG_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path


def test_csv_files_are_read_too(tmp_path: Path) -> None:
    folder = tmp_path / "rte"
    folder.mkdir()
    header = "sentence1,sentence2,label,idx\n"
    (folder / "train.csv").write_text(header + "".join(f"A {i}.,B {i}.,{i % 2},{i}\n" for i in range(6)))
    write_jsonl(folder / "validation.jsonl", RTE_ROWS)
    splits = load_splits("rte", tmp_path)
    assert len(splits.train) == 6 and splits.split_info["files"]["train"].endswith("train.csv")


def test_parquet_files_are_read_too(tmp_path: Path, data_dir: Path) -> None:
    from datasets import Dataset

    folder = tmp_path / "rte"
    folder.mkdir()
    real = load_splits("rte", data_dir).train[:10]
    Dataset.from_list(real).to_parquet(str(folder / "train.parquet"))
    write_jsonl(folder / "validation.jsonl", RTE_ROWS)
    splits = load_splits("rte", tmp_path)
    assert splits.split_info["files"]["train"].endswith("train.parquet")
    assert [row["sentence1"] for row in splits.train] == [row["sentence1"] for row in real]


def one_line(error: pytest.ExceptionInfo[UserError]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_unknown_task(data_dir: Path) -> None:
    with pytest.raises(UserError, match="unknown task 'nope'") as error:
        load_splits("nope", data_dir)
    assert "rte" in one_line(error)


def test_missing_data_dir(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist") as error:
        load_splits("rte", tmp_path / "missing")
    assert "--data-dir" in one_line(error) and "rte/train.jsonl" in one_line(error)


def test_missing_task_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no cb/train.jsonl") as error:
        load_splits("cb", tmp_path)
    assert str(tmp_path) in one_line(error) and "--data-dir" in one_line(error)


def test_malformed_jsonl_names_file_and_line(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "rte" / "validation.jsonl", RTE_ROWS)
    lines = [json.dumps(row) for row in RTE_ROWS[:5]]
    lines[2] = '{"sentence1": "broken", "label": 1'
    (tmp_path / "rte" / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="line 3 is not valid JSON") as error:
        load_splits("rte", tmp_path)
    assert "train.jsonl" in one_line(error)


def test_row_missing_a_template_field(tmp_path: Path) -> None:
    rows = [dict(row) for row in RTE_ROWS]
    del rows[4]["sentence2"]
    write_jsonl(tmp_path / "rte" / "train.jsonl", rows)
    write_jsonl(tmp_path / "rte" / "validation.jsonl", RTE_ROWS)
    with pytest.raises(UserError, match="row 5 has no field 'sentence2'") as error:
        load_splits("rte", tmp_path)
    assert "train.jsonl" in one_line(error)


def test_out_of_range_label(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "rte" / "train.jsonl", [{**RTE_ROWS[0], "label": 7}])
    write_jsonl(tmp_path / "rte" / "validation.jsonl", RTE_ROWS)
    with pytest.raises(UserError, match="label 7 is outside 0..1"):
        load_splits("rte", tmp_path)


def test_evaluation_only_task_cannot_train(data_dir: Path) -> None:
    with pytest.raises(UserError, match="'boolq' has no train split") as error:
        load_splits("boolq", data_dir)
    assert "rte" in one_line(error) and "scitail" not in one_line(error)


def test_bad_k_shot(data_dir: Path) -> None:
    with pytest.raises(UserError, match="only 250 train rows"):
        load_splits("cb", data_dir, k_shot=1000)
    with pytest.raises(UserError, match="k_shot must be a positive"):
        load_splits("cb", data_dir, k_shot=0)
