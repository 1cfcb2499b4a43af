"""Task data: read a task's files through Hugging Face `datasets` and cut them into train/validation/test.

The split rule follows the ATTEMPT/MPT baselines, because GLUE/SuperGLUE test labels are hidden:
- small tasks: the original validation set is shuffled with the seed and halved into validation and test;
- large tasks: 1,000 seeded train rows are held out as validation, the original validation set is the test.
A large task with fewer than 2,000 train rows (the bundled demo copies) holds out 20% instead.

Generation tasks ship a test file with references, so their official train / validation / test files are
used as they are; E2E has no train split, so its train rows come from the official validation file (whole
meaning representations, seeded) and the rest of that file is the validation split. Their evaluation rows
are one per input, with every reference of that input under `references`.

Rows come back as plain dicts with the label already mapped to an int (or a float score for STS-B).
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import disable_progress_bars, load_dataset
from datasets.exceptions import DatasetGenerationError
from datasets.utils import logging as datasets_logging

from dtvg_engine.errors import UserError
from dtvg_engine.train.tasks import (
    BUILTIN,
    HUB_PREFIX,
    Task,
    clean,
    get_task,
    label_of,
    target_id,
    trainable_tasks,
)

BUNDLED_DATA_DIR = Path(__file__).resolve().parent / "bundled_data"
FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
HOLD_OUT = 1000
HOLD_OUT_MIN_TRAIN = 2000
HOLD_OUT_FRACTION = 0.2
UNLABELLED = -1  # Hugging Face marks rows without a gold label (SNLI "-") this way
REFERENCES = "references"
"""Key of a generation evaluation row's reference texts (every text of its input)."""

Row = dict[str, Any]

disable_progress_bars()  # a worker.log and a CLI progress view have no use for per-file bars
datasets_logging.set_verbosity(datasets_logging.CRITICAL)  # we report a bad file once, with its line


@dataclass
class Splits:
    """The three splits of one task, and how they were made (recorded in the run config)."""

    train: list[Row]
    validation: list[Row]
    test: list[Row]
    split_info: dict[str, Any]


def default_data_dir() -> Path:
    """Where task data is read from by default: $DTVG_DATA_DIR, else the small bundled demo copies."""
    env = os.environ.get("DTVG_DATA_DIR")
    return Path(env) if env else BUNDLED_DATA_DIR


def load_splits(
    task_name: str,
    data_dir: str | Path,
    seed: int = 0,
    k_shot: int | None = None,
    max_eval: int | None = None,
    need_train: bool = True,
) -> Splits:
    """Read one task and return its seeded train/validation/test splits."""
    task = get_task(task_name)
    if need_train and not task.has_train:
        trainable = ", ".join(trainable_tasks())
        raise UserError(
            f"task {task.name!r} has no train split (evaluation-only); "
            f"use it as an evaluation task or pick one of: {trainable}"
        )
    _check_positive("k_shot", k_shot)
    _check_positive("max_eval", max_eval)
    files: dict[str, str] = {}
    if task.generation:
        train, validation, test, info = _generation_splits(task, data_dir, seed, k_shot, files)
    else:
        train, validation, test, info = _label_splits(task, data_dir, seed, files)
        if k_shot is not None:
            train = stratified_sample(task, train, k_shot, seed)
    if max_eval is not None:
        validation, test = _cap(validation, max_eval, seed), _cap(test, max_eval, seed)

    info.update(
        task=task.name,
        seed=seed,
        k_shot=k_shot,
        max_eval=max_eval,
        sizes={"train": len(train), "validation": len(validation), "test": len(test)},
        files=files,
    )
    if k_shot is not None and not task.generation:
        info["k_shot_counts"] = {str(c): n for c, n in sorted(_class_counts(task, train).items())}
    return Splits(train, validation, test, info)


SMALL_RULE = "small: original validation shuffled and halved into validation/test"


def _label_splits(
    task: Task, data_dir: str | Path, seed: int, files: dict[str, str]
) -> tuple[list[Row], list[Row], list[Row], dict[str, Any]]:
    """Classification and regression: the small- or large-task rule over the train and validation files."""
    original_train: list[Row] = []
    if task.has_train:
        original_train, files["train"] = read_split(task, data_dir, "train")
    original_eval, files["validation"] = read_split(task, data_dir, "validation")
    if task.size == "small":
        validation, test = _halve(original_eval, seed)
        return original_train, validation, test, {"rule": SMALL_RULE}
    held_out = _hold_out_size(len(original_train))
    train, validation = _hold_out(original_train, held_out, seed)
    rule = f"large: {held_out} seeded train rows held out as validation"
    return train, validation, original_eval, {"rule": rule, "held_out": held_out}


def _generation_splits(
    task: Task, data_dir: str | Path, seed: int, k_shot: int | None, files: dict[str, str]
) -> tuple[list[Row], list[Row], list[Row], dict[str, Any]]:
    """Generation: the official files as given (k seeded train rows for a few-shot run), or, for E2E,
    train rows drawn from the validation file by whole input; evaluation rows one per input."""
    if task.size == "shots_from_validation":
        pool, files["validation"] = read_split(task, data_dir, "validation")
        train, validation = _shots_by_input(task, pool, k_shot, seed)
        rule = (
            "no train split: train rows drawn from the official validation file by whole "
            f"{task.group_field} (seeded), the rest of that file is validation, the official test is test"
        )
    else:
        train, files["train"] = read_split(task, data_dir, "train")
        validation, files["validation"] = read_split(task, data_dir, "validation")
        if k_shot is not None:
            train = _sample(train, k_shot, seed, f"{task.name} has only {len(train)} train rows")
        rule = "given: the official train, validation and test files"
    test, files["test"] = read_split(task, data_dir, "test")
    return train, evaluation_rows(task, validation), evaluation_rows(task, test), {"rule": rule}


def _sample(rows: Sequence[Row], k: int, seed: int, shortage: str) -> list[Row]:
    """K seeded rows in random order; a UserError saying `shortage` when there are fewer."""
    if k > len(rows):
        raise UserError(f"k_shot={k} but {shortage}; use a smaller --k-shot")
    return random.Random(seed).sample(list(rows), k)


def _shots_by_input(
    task: Task, rows: Sequence[Row], k_shot: int | None, seed: int
) -> tuple[list[Row], list[Row]]:
    """(train, validation) from one file with one row per reference: the inputs in a seeded order give
    their rows to train until it holds k_shot rows (half of the inputs without k_shot; the last input
    taken may give only some of its rows), and the inputs never touched are validation, so no input is in
    both."""
    groups = list(_grouped(task, rows).values())
    random.Random(seed).shuffle(groups)
    wanted = k_shot if k_shot is not None else sum(len(group) for group in groups[: len(groups) // 2])
    train: list[Row] = []
    taken = 0
    while len(train) < wanted and taken < len(groups):
        train += groups[taken][: wanted - len(train)]
        taken += 1
    validation = [row for group in groups[taken:] for row in group]
    if not train or len(train) < wanted or not validation:
        raise UserError(
            f"k_shot={k_shot} but {task.name}'s validation file, its only source of train rows, has "
            f"{len(rows)} rows for {len(groups)} inputs, and some inputs must stay for validation; "
            "use a smaller --k-shot"
        )
    return train, validation


def _grouped(task: Task, rows: Sequence[Row]) -> dict[Any, list[Row]]:
    """Rows of a one-row-per-reference file by their input (`group_field`), in first-seen order."""
    groups: dict[Any, list[Row]] = defaultdict(list)
    for row in rows:
        groups[row[task.group_field]].append(row)
    return groups


def evaluation_rows(task: Task, rows: Sequence[Row]) -> list[Row]:
    """One row per input, with every reference text of that input under `references`."""
    if task.references_field is not None:
        return [{**row, REFERENCES: [clean(text) for text in row[task.references_field]]} for row in rows]
    return [
        {**group[0], REFERENCES: [clean(row[task.target_field]) for row in group]}
        for group in _grouped(task, rows).values()
    ]


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise UserError(f"{name} must be a positive number of rows, got {value}")


# --- reading -------------------------------------------------------------------------------------


def read_split(task: Task, data_dir: str | Path, split: str) -> tuple[list[Row], str]:
    """All rows of one original split, checked and label-mapped, and where they came from: a user
    task's own folder or Hub dataset (`task.data`), else its folder under `data_dir`. A user task's
    errors name the file that defined it."""
    if task.origin == BUILTIN:
        return _read_split(task, data_dir, split)
    try:
        return _read_split(task, data_dir, split)
    except UserError as error:
        raise UserError(f"{task.origin}: task {task.name!r}: {error}") from None


def _read_split(task: Task, data_dir: str | Path, split: str) -> tuple[list[Row], str]:
    if task.data is not None and task.data.startswith(HUB_PREFIX):
        return _read_hub_split(task, task.data[len(HUB_PREFIX) :], None, split)
    if task.data is None and str(data_dir).startswith(HUB_PREFIX):
        return _read_hub_split(task, str(data_dir)[len(HUB_PREFIX) :], Path(task.path).name, split)
    file = _find_split_file(task, Path(data_dir), split)
    return _prepare_rows(task, _read_file(file), str(file), split), str(file)


def _find_split_file(task: Task, data_dir: Path, split: str) -> Path:
    """The first of <task.path>/<split>.{jsonl,json,csv,parquet} that exists under data_dir, or of
    <split>.* in a user task's own folder."""
    if task.data is not None:
        for suffix in FORMATS:
            if (file := Path(task.data) / f"{split}{suffix}").is_file():
                return file
        raise UserError(f"data: no {split}.jsonl (or .json/.csv/.parquet) in {task.data}")
    hint = f"pass --data-dir pointing at the folder holding {task.path}/{split}.jsonl"
    if not data_dir.is_dir():
        what = "is not a folder" if data_dir.exists() else "does not exist"
        raise UserError(f"data dir {data_dir} {what}; {hint} (or set DTVG_DATA_DIR)")
    for suffix in FORMATS:
        file = data_dir / task.path / f"{split}{suffix}"
        if file.is_file():
            return file
    raise UserError(f"no {task.path}/{split}.jsonl (or .json/.csv/.parquet) under {data_dir}; {hint}")


def _read_file(file: Path) -> list[Row]:
    """Rows of a local json/jsonl/csv/parquet file, via `datasets` (cached after the first read)."""
    if _is_blank(file):  # `datasets` fails on these with a bare StopIteration
        return []
    try:
        dataset = load_dataset(FORMATS[file.suffix], data_files={"rows": str(file)}, split="rows")
    except DatasetGenerationError as error:
        if FORMATS[file.suffix] == "json":
            _raise_on_bad_json_line(file)
        cause = str(error.__cause__ or error).splitlines()[0]
        raise UserError(f"could not read {file}: {cause}") from None
    return dataset.to_list()


def _is_blank(file: Path) -> bool:
    """Whether a file holds nothing but whitespace (read up to its first other byte)."""
    with file.open("rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return False
    return True


def _raise_on_bad_json_line(file: Path) -> None:
    """Scan a JSON Lines file (slow path, only after a failed load) and name its first broken line."""
    with file.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(
                    f"{file}: line {number} is not valid JSON ({error.msg}); fix or delete that line"
                ) from None


def _read_hub_split(task: Task, repo: str, name: str | None, split: str) -> tuple[list[Row], str]:
    """A split from a Hub dataset repo: the config `name` of a repo whose configs are named like the
    tasks (e.g. nyu-mll/glue), or a user task's own dataset (`name` None)."""
    try:
        dataset = load_dataset(repo, name, split=split)
    except Exception as error:  # network, auth, missing config: all are the user's to fix
        raise UserError(f"could not load {task.name} {split} from hub dataset {repo!r}: {error}") from None
    source = f"{HUB_PREFIX}{repo}{f'/{name}' if name else ''}:{split}"
    return _prepare_rows(task, dataset.to_list(), source, split), source


def _prepare_rows(task: Task, rows: list[Row], source: str, split: str) -> list[Row]:
    """Rows with every field the task needs and the label mapped; hub-style unlabelled rows are dropped."""
    if not rows:
        raise UserError(f"{source} has no rows; point --data-dir at a folder with the full task files")
    if task.generation:
        for number, row in enumerate(rows, start=1):
            _check_generation_row(task, row, f"{source}: row {number}", split)
        return rows
    prepared = []
    unlabelled = 0
    for number, row in enumerate(rows, start=1):
        for name in (*task.text_fields, task.label_field):
            if row.get(name) is None:
                raise UserError(
                    f"{source}: row {number} has no field {name!r}, which task {task.name!r} needs; "
                    f"every row needs {', '.join((*task.text_fields, task.label_field))}"
                )
        if row[task.label_field] == UNLABELLED:
            unlabelled += 1
            continue
        prepared.append({**row, task.label_field: _checked_label(task, row, f"{source}: row {number}")})
    if unlabelled:  # said, so a count of rows that does not add up is explained
        print(
            f"{source}: {unlabelled} row(s) labelled {UNLABELLED} (no gold label) left out", file=sys.stderr
        )
    return prepared


def _check_generation_row(task: Task, row: Row, where: str, split: str) -> None:
    """Refuse a generation row without its text fields, with a list field that is not a list, or with an
    empty target (or, outside train, empty references)."""
    for name in task.text_fields:
        if row.get(name) is None:
            raise UserError(f"{where} has no field {name!r}, which task {task.name!r} needs")
        if name in task.joins and not isinstance(row[name], list):
            raise UserError(f"{where}: field {name!r} must be a list of strings, got {row[name]!r}")
    if not _is_text(row.get(task.target_field)):
        raise UserError(f"{where}: field {task.target_field!r} must be a non-empty text")
    if task.references_field is not None and split != "train":
        references = row.get(task.references_field)
        if not isinstance(references, list) or not references or not all(map(_is_text, references)):
            raise UserError(
                f"{where}: field {task.references_field!r} must be a non-empty list of non-empty texts"
            )


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _checked_label(task: Task, row: Row, where: str) -> int | float:
    """The row's label, refusing values outside the task's label words."""
    try:
        label = label_of(task, row)
    except UserError as error:
        raise UserError(f"{where}: {error}") from None
    top = task.num_labels - 1
    if not 0 <= label <= top:
        raise UserError(f"{where}: label {label} is outside 0..{top} for task {task.name!r}; fix the file")
    return label


# --- splitting -----------------------------------------------------------------------------------


def _shuffled(rows: Sequence[Row], seed: int) -> list[Row]:
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return [rows[i] for i in order]


def _halve(rows: Sequence[Row], seed: int) -> tuple[list[Row], list[Row]]:
    """Small-task rule: shuffle the original validation set, first half validation, second half test."""
    shuffled = _shuffled(rows, seed)
    half = len(shuffled) // 2
    return shuffled[:half], shuffled[half:]


def _hold_out_size(train_size: int) -> int:
    """1,000 rows, or 20% of a train set too small to spare 1,000 (the bundled demo copies)."""
    if train_size >= HOLD_OUT_MIN_TRAIN:
        return HOLD_OUT
    return round(train_size * HOLD_OUT_FRACTION)


def _hold_out(rows: Sequence[Row], size: int, seed: int) -> tuple[list[Row], list[Row]]:
    """Large-task rule: (remaining train, held-out validation) from one seeded shuffle of train."""
    shuffled = _shuffled(rows, seed)
    return shuffled[size:], shuffled[:size]


def _cap(rows: list[Row], limit: int, seed: int) -> list[Row]:
    """At most `limit` rows: a seeded sample that keeps the original order."""
    if len(rows) <= limit:
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), limit))
    return [rows[i] for i in keep]


# --- k-shot sampling -----------------------------------------------------------------------------


def _class_counts(task: Task, rows: Sequence[Row]) -> Counter[int]:
    return Counter(target_id(task, row[task.label_field]) for row in rows)


def stratified_sample(task: Task, rows: Sequence[Row], k: int, seed: int) -> list[Row]:
    """K rows with the class distribution of `rows` (STS-B: of the rounded scores), seeded and shuffled."""
    if k > len(rows):
        raise UserError(f"k_shot={k} but {task.name} has only {len(rows)} train rows; use a smaller --k-shot")
    by_class: dict[int, list[Row]] = defaultdict(list)
    for row in rows:
        by_class[target_id(task, row[task.label_field])].append(row)
    quotas = allocate(Counter({cls: len(members) for cls, members in by_class.items()}), k)
    rng = random.Random(seed)
    picked = [row for cls in sorted(by_class) for row in rng.sample(by_class[cls], quotas[cls])]
    rng.shuffle(picked)
    return picked


def allocate(counts: Counter[int], k: int) -> dict[int, int]:
    """Split k over classes in proportion to counts (largest remainder); every class gets one if k allows."""
    total = sum(counts.values())
    exact = {cls: k * n / total for cls, n in counts.items()}
    quotas = {cls: int(share) for cls, share in exact.items()}
    by_remainder = sorted(counts, key=lambda cls: (-(exact[cls] - quotas[cls]), -counts[cls], cls))
    for cls in by_remainder[: k - sum(quotas.values())]:
        quotas[cls] += 1
    if k >= len(counts):
        for cls in sorted(c for c, q in quotas.items() if q == 0):
            donor = max(quotas, key=lambda c: (quotas[c], -c))
            quotas[donor] -= 1
            quotas[cls] = 1
    return quotas
