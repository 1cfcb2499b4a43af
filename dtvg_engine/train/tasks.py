"""The task registry: how each benchmark task becomes a short text-to-text problem.

Every task has an input template that ends in an answer cue ("Answer:") and one label word per label id.
The engine scores classification by ranking the label words' FIRST tokens at the answer position, so the
label words of one task must start with pairwise-distinct tokens (checked in tests with the real
SmolLM2 tokenizer). STS-B is regression: its label words are the numbers zero..five (spelled out, because
SmolLM2 splits " 3" into " " + "3", which would give all six the same first token); training targets the
rounded score and evaluation predicts the probability-weighted mean of those values.

Generation tasks (WebNLG, CommonGen, E2E) are the third kind: no label words, but a target text the model
learns to write after the input, and every reference text of an input to score its greedy output against
(BLEU and ROUGE). A list field (WebNLG's triples, CommonGen's concepts) is joined into the template with the
task's separator.

The tasks are described in TOML task files (`load_task_file`): the built-in ones in the shipped
`tasks.toml`, a user's in their own file (`--tasks FILE`, $DTVG_TASKS, a study's `tasks`), read by the
same code into the same `Task`. A run records the definitions of the user tasks it uses in its
config.json (`recorded`), so its folder stays readable without the file (`adopt`).

Standard library only: the terminal UI imports this module.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from string import Formatter
from typing import Any

import tomllib

from dtvg_engine.errors import UserError
from dtvg_engine.runs.safefiles import FileRefused, read_bytes

HUB_PREFIX = "hf://"
"""How a data dir names a Hugging Face dataset instead of a local folder (`hf://owner/name`)."""


@dataclass(frozen=True)
class Task:
    """One task: where its data lives, how a row becomes model input, and how it is scored."""

    name: str
    path: str
    template: str
    label_words: tuple[str, ...]
    metrics: tuple[str, ...] = ("accuracy",)
    """Every metric a run reports."""
    scored_by: tuple[str, ...] | None = None
    """The metrics whose mean is the run's score (checkpoint choice, results tables), as the authors'
    code averages its `metric_names`; every reported metric when None."""
    size: str = "large"
    has_train: bool = True
    regression: bool = False
    label_field: str = "label"
    string_labels: Mapping[str, int] | None = field(default=None, hash=False)
    target_field: str | None = None
    """Generation tasks: the field holding the text to learn (None for classification and regression)."""
    references_field: str | None = None
    """Generation tasks whose evaluation rows list all their texts in one field (WebNLG's `references`);
    when None, the texts of the rows sharing `group_field` are the references."""
    group_field: str | None = None
    """Generation tasks with one row per reference: the field that names the input (CommonGen's
    concept_set_idx, E2E's meaning_representation)."""
    joins: Mapping[str, str] = field(default_factory=dict, hash=False)
    """How a list field is joined into the template: field name -> separator."""
    data: str | None = None
    """A user task's data: an absolute folder, or `hf://owner/name`; None for a folder `path` under the
    run's data dir (the built-in tasks)."""
    origin: str = field(default="built-in", compare=False)
    """Where the task was defined: "built-in", or the file that defined it (named in its errors)."""
    text_fields: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        # The fields a row must have are exactly the ones the template names; derive them once.
        names = tuple(dict.fromkeys(name for _, name, _, _ in Formatter().parse(self.template) if name))
        object.__setattr__(self, "text_fields", names)

    @property
    def score_metrics(self) -> tuple[str, ...]:
        """The metrics averaged into the score."""
        return self.scored_by or self.metrics

    @property
    def primary(self) -> str:
        """The score's name: the one metric, or e.g. "mean(accuracy,f1)" (`primary` of eval events)."""
        names = self.score_metrics
        return names[0] if len(names) == 1 else f"mean({','.join(names)})"

    @property
    def generation(self) -> bool:
        """Whether the task is scored on generated text (BLEU/ROUGE) rather than label words."""
        return self.target_field is not None

    @property
    def kind(self) -> str:
        """classification, regression or generation."""
        return "generation" if self.generation else "regression" if self.regression else "classification"

    @property
    def num_labels(self) -> int:
        """How many label words (classes, or score buckets for regression) the task has."""
        return len(self.label_words)


GENERATION_METRICS = ("bleu", "rouge1", "rouge2", "rougeL")
"""Corpus BLEU (sacrebleu) and ROUGE-1/2/L F-measure (rouge-score), as fractions; the score is their mean."""

METRICS_OF_KIND: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "f1", "macro_f1", "mcc"),
    "regression": ("pearson", "spearman"),
    "generation": GENERATION_METRICS,
}
"""The metrics a task of each kind may report (`metrics` of a task table)."""
DEFAULT_METRICS = {"classification": ("accuracy",), "regression": ("pearson", "spearman")}
"""What a task reports when its table names no `metrics` (generation: every metric of its kind)."""
SIZES = {"label": ("large", "small"), "generation": ("given", "shots_from_validation")}
"""The split rules (data.py) of classification and regression tasks, and of generation tasks."""

COMMON_KEYS = ("data", "kind", "template", "metrics", "scored_by", "size", "has_train", "replaces")
KIND_KEYS = {
    "classification": ("label_words", "label_field", "labels"),
    "regression": ("label_words", "label_field", "range"),
    "generation": ("target", "references", "group", "joins"),
}
"""The keys of a task table: those of every task, and those of its kind."""

BUILTIN = "built-in"
BUILTIN_FILE = Path(__file__).resolve().parent / "tasks.toml"
TASKS_ENV = "DTVG_TASKS"
"""The environment variable naming a default task file."""
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""A task name: it becomes part of run ids and file names."""
FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""A field name a template may hold: a plain name (no attribute, index, conversion or format spec)."""


TOML_LIMIT = 4 << 20
"""The most bytes read of a task or study file: 4 MiB, far more than any holds."""


def read_toml(path: Path, kind: str) -> dict[str, Any]:
    """A TOML file a user names (a task file, a study file), as a table; a missing, unreadable or
    malformed one is a one-line UserError naming it as a `kind`. A link to a file is fine; a FIFO or a
    device (/dev/zero) is refused rather than waited on or read without end, and so is a file larger
    than `TOML_LIMIT`."""
    try:
        return tomllib.loads(read_bytes(path, TOML_LIMIT, follow=True).decode("utf-8"))
    except FileNotFoundError:
        raise UserError(f"{kind} {path} does not exist") from None
    except FileRefused as exc:
        raise UserError(f"{kind} {exc}; name a TOML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"could not read {kind} {path} ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None


def load_task_file(path: str | Path) -> dict[str, Task]:
    """The tasks of a task file (TOML, one `[tasks.NAME]` table each); reading it executes nothing.
    A relative `data` folder is resolved against the file's folder."""
    path = Path(path)
    document = read_toml(path, "task file")
    unknown = sorted(set(document) - {"tasks"})
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r}; a task file holds [tasks.NAME] tables only")
    builtin = path.resolve() == BUILTIN_FILE
    return parse_tasks(document.get("tasks", {}), str(path), None if builtin else path.resolve().parent)


def parse_tasks(tables: Any, origin: str, base: Path | None) -> dict[str, Task]:
    """Tasks from the `[tasks.NAME]` tables of `origin`: the shipped file (`base` None: a relative `data`
    is a folder under the run's data dir), a user's task or study file (a relative `data` is resolved
    against `base`, their folder), or a run's config.json (`RECORD_KEY`: every `data` absolute)."""
    if not isinstance(tables, dict):
        raise UserError(f"{origin}: tasks must be [tasks.NAME] tables")
    return {name: task_from_table(name, table, origin, base) for name, table in tables.items()}


def task_from_table(name: str, table: Any, origin: str, base: Path | None) -> Task:
    """One task from its table, with every check a task gets before its data is read; a one-line
    UserError naming the origin, the task and the key otherwise."""
    where = f"{origin}: task {name!r}"
    if not NAME.fullmatch(name):
        raise UserError(f"{where}: a task name is letters, digits, '_' and '-' (at most 64)")
    if not isinstance(table, dict):
        raise UserError(f"{where} must be a table ([tasks.{name}] followed by key = value lines)")
    read = _Reader(table, where)
    kind = read.choice("kind", tuple(METRICS_OF_KIND))
    allowed = (*COMMON_KEYS, *KIND_KEYS[kind])
    unknown = [key for key in table if key not in allowed]
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; a {kind} task takes {', '.join(allowed)}")
    builtin = origin == str(BUILTIN_FILE)
    _check_shadowing(name, read.flag("replaces", False), where, user=not builtin)
    values: dict[str, Any] = {"template": read.template(), **_data_place(read, base)}
    values["has_train"] = read.flag("has_train", True)
    if kind == "generation":
        values |= _generation_values(read)
        sizes = SIZES["generation"]
    else:
        values |= _label_values(read, kind)
        sizes = SIZES["label"]
    values["size"] = read.choice("size", sizes, sizes[0])
    if values["size"] == "shots_from_validation" and values.get("group_field") is None:
        raise UserError(f"{where}: size: shots_from_validation needs `group`, the field naming the input")
    metrics = read.names("metrics", METRICS_OF_KIND[kind], DEFAULT_METRICS.get(kind, METRICS_OF_KIND[kind]))
    scored_by = read.names("scored_by", metrics, None)
    return Task(name, **values, metrics=metrics, scored_by=scored_by, origin=BUILTIN if builtin else origin)


def _check_shadowing(name: str, replaces: bool, where: str, user: bool) -> None:
    """A user's task may take a built-in task's name only with `replaces = true`, and only that name."""
    builtin = name in TASKS
    if user and builtin and not replaces:
        raise UserError(f"{where}: {name!r} is a built-in task; rename yours, or add `replaces = true`")
    if replaces and not builtin:
        raise UserError(f"{where}: replaces: there is no built-in task {name!r} to replace; remove the key")


def _data_place(read: _Reader, base: Path | None) -> dict[str, Any]:
    """`path` and `data` of a task: a folder under the run's data dir (the shipped file), else the user's
    Hub dataset or folder (a relative one resolved against `base`, and there when read from a file)."""
    data = read.text("data")
    if data.startswith(HUB_PREFIX):
        repo = data[len(HUB_PREFIX) :]
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise UserError(f"{read.where}: data: a Hub dataset is written hf://owner/name (got {data!r})")
        return {"path": Path(repo).name, "data": data}
    folder = Path(data).expanduser()
    if base is None and not folder.is_absolute():
        return {"path": data}
    folder = (base / folder).resolve() if base is not None else folder
    if base is not None and not folder.is_dir():
        raise UserError(f"{read.where}: data: folder {folder} does not exist; point it at your task's folder")
    return {"path": folder.name, "data": str(folder)}


def _label_values(read: _Reader, kind: str) -> dict[str, Any]:
    """The label words of a classification or regression task, and how a row's label maps onto them."""
    words = read.strings("label_words")
    if len(words) < 2 or len(set(words)) != len(words):
        raise UserError(f"{read.where}: label_words must list at least two different words, one per label id")
    values: dict[str, Any] = {"label_words": words, "label_field": read.text("label_field", "label")}
    if kind == "regression":
        values["regression"] = True
        if read.table.get("range") != [0, len(words) - 1]:
            raise UserError(
                f"{read.where}: range must be [0, {len(words) - 1}]: a regression task's scores run from 0 "
                f"to its number of label words less one (got {read.table.get('range')!r})"
            )
    elif "labels" in read.table:
        labels = read.table["labels"]
        if not isinstance(labels, dict) or not labels:
            raise UserError(f"{read.where}: labels must be a table of string label = label id")
        for label, number in labels.items():
            if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number < len(words):
                raise UserError(
                    f"{read.where}: labels: {label} = {number!r} is not a label id of the "
                    f"{len(words)} label words (0 to {len(words) - 1})"
                )
        values["string_labels"] = dict(labels)
    return values


def _generation_values(read: _Reader) -> dict[str, Any]:
    """The target field of a generation task, where its references come from, and its joined fields."""
    values: dict[str, Any] = {"label_words": (), "target_field": read.text("target")}
    references = read.text("references", None)
    group = read.text("group", None)
    if (references is None) == (group is None):
        raise UserError(
            f"{read.where}: give one of references (a field listing every reference text of a row) or "
            "group (the field naming the input, when each reference is a row of its own)"
        )
    values |= {"references_field": references, "group_field": group}
    joins = read.table.get("joins", {})
    if not isinstance(joins, dict) or not all(isinstance(v, str) for v in joins.values()):
        raise UserError(
            f'{read.where}: joins must be a table of field = separator, e.g. {{ concepts = ", " }}'
        )
    values["joins"] = dict(joins)
    return values


class _Reader:
    """Typed reads of one task table's keys, each refusing a wrong value with the task and key named."""

    def __init__(self, table: dict[str, Any], where: str) -> None:
        self.table = table
        self.where = where

    def _fail(self, key: str, what: str) -> UserError:
        return UserError(f"{self.where}: {key} must be {what} (got {self.table.get(key)!r})")

    def text(self, key: str, default: Any = ...) -> Any:
        if key not in self.table:
            if default is ...:
                raise UserError(f"{self.where}: missing key {key!r}")
            return default
        value = self.table[key]
        if not isinstance(value, str) or not value.strip():
            raise self._fail(key, "a non-empty string")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self._fail(key, "true or false")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: Any = ...) -> str:
        value = self.text(key, default)
        if value not in choices:
            raise self._fail(key, f"one of {', '.join(choices)}")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.table.get(key)
        if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
            raise self._fail(key, "a list of non-empty strings")
        return tuple(value)

    def names(self, key: str, allowed: tuple[str, ...], default: Any) -> Any:
        """A non-empty list of distinct names out of `allowed`, or `default` when the key is absent."""
        if key not in self.table:
            return default
        value = self.strings(key)
        if not value or len(set(value)) != len(value) or not set(value) <= set(allowed):
            raise self._fail(key, f"a list of distinct names out of {', '.join(allowed)}")
        return value

    def template(self) -> str:
        """The template: the row's fields in braces, each a plain name (formatting runs no code)."""
        template = self.text("template")
        try:
            parts = list(Formatter().parse(template))
        except ValueError as exc:
            raise UserError(f"{self.where}: template: {exc}; write a literal brace as {{{{ or }}}}") from None
        fields = [(name, spec, conversion) for _, name, spec, conversion in parts if name is not None]
        if not fields:
            raise UserError(
                f"{self.where}: template names no field; put the row's fields in braces, e.g. {{text}}"
            )
        for name, spec, conversion in fields:
            if not FIELD.fullmatch(name) or spec or conversion:
                raise UserError(f"{self.where}: template: {{{name}}} is not a plain field name like {{text}}")
        return template


def definition(task: Task) -> dict[str, Any]:
    """A task as its table in a task file: what `dtvg tasks show` prints and a run's config.json records
    (its data an absolute folder or Hub id, so the record reads back without the file)."""
    table: dict[str, Any] = {"data": task.data or task.path, "kind": task.kind, "template": task.template}
    if task.generation:
        table["target"] = task.target_field
        table |= (
            {"references": task.references_field} if task.references_field else {"group": task.group_field}
        )
        if task.joins:
            table["joins"] = dict(task.joins)
    else:
        table |= {"label_words": list(task.label_words), "label_field": task.label_field}
        if task.regression:
            table["range"] = [0, task.num_labels - 1]
        if task.string_labels is not None:
            table["labels"] = dict(task.string_labels)
    table |= {"metrics": list(task.metrics), "size": task.size, "has_train": task.has_train}
    if task.scored_by is not None:
        table["scored_by"] = list(task.scored_by)
    if task.origin != BUILTIN and task.name in TASKS:
        table["replaces"] = True
    return table


TASKS: dict[str, Task] = {}
TASKS.update(load_task_file(BUILTIN_FILE))  # filled in two steps: the shadowing check reads it
"""The built-in tasks, from the shipped task file."""

_USER_TASKS: dict[str, Task] = {}
"""The tasks this process was given: from a task file (`use`) or a run's record of them (`adopt`)."""


def use(user_tasks: Mapping[str, Task]) -> None:
    """Make these tasks known to `get_task` (a user's task file, a study's tables, a run's record)."""
    _USER_TASKS.update(user_tasks)


def use_file(path: str | Path | None) -> dict[str, Task]:
    """Read and `use` a task file: `path`, else $DTVG_TASKS when set; the tasks it defines."""
    path = path or os.environ.get(TASKS_ENV)
    if not path:
        return {}
    found = load_task_file(path)
    use(found)
    return found


def all_tasks() -> dict[str, Task]:
    """Every known task: the built-ins, then the user's (a user task replacing a built-in in its place)."""
    return {**TASKS, **_USER_TASKS}


def get_task(name: str) -> Task:
    """The task called `name`, a user's before a built-in; a UserError listing the known tasks otherwise."""
    known = all_tasks()
    try:
        return known[name]
    except KeyError:
        raise UserError(f"unknown task {name!r}; known tasks: {', '.join(known)}") from None


def trainable_tasks() -> list[str]:
    """Names of the tasks that have a train split (usable as stage-1 or target tasks)."""
    return [name for name, task in all_tasks().items() if task.has_train]


RECORD_KEY = "task_definitions"
"""The config.json key holding the definitions of the user tasks a run uses."""


def recorded(names: Iterable[str]) -> dict[str, Any]:
    """What a run's config records of its tasks: the definition of each user task among `names`
    (nothing for built-in ones, so their configs stay as they were)."""
    tables = {name: definition(_USER_TASKS[name]) for name in dict.fromkeys(names) if name in _USER_TASKS}
    return {RECORD_KEY: tables} if tables else {}


def adopt(config: Mapping[str, Any], origin: str = "config.json") -> None:
    """Make the user tasks a run's config records known, so the run reads, resumes and reports without
    its task file (a run without the record names built-in tasks only)."""
    use(parse_tasks(config.get(RECORD_KEY, {}), origin, None))


def render(task: Task, row: Mapping[str, Any]) -> str:
    """The model input for one row: the task template filled with the row's text fields (a list field
    joined with its separator, each item cleaned)."""
    return task.template.format(**{name: field_text(task, row, name) for name in task.text_fields})


def field_text(task: Task, row: Mapping[str, Any], name: str) -> str:
    """One text field as it enters the template: cleaned, a list field's items joined with its separator."""
    value = row[name]
    if name in task.joins and isinstance(value, list):
        return task.joins[name].join(clean(item) for item in value)
    return clean(value)


def clean(value: Any) -> str:
    """Text with surrounding whitespace removed, so templates join fields with exactly one space."""
    return str(value).strip()


def label_of(task: Task, row: Mapping[str, Any]) -> int | float:
    """The row's gold label: a float score for regression, else an integer label id."""
    value = row[task.label_field]
    try:
        if task.regression:
            return float(value)
        if task.string_labels is not None and isinstance(value, str):
            return task.string_labels[value]
        return int(value)
    except (KeyError, TypeError, ValueError):
        raise UserError(
            f"task {task.name!r}: {task.label_field}={value!r} is not a valid label; "
            f"expected {_expected_labels(task)}"
        ) from None


def _expected_labels(task: Task) -> str:
    """A human description of the labels a task accepts, for error messages."""
    if task.regression:
        return f"a number from 0 to {task.num_labels - 1}"
    if task.string_labels is not None:
        return "one of " + ", ".join(task.string_labels)
    return f"an integer from 0 to {task.num_labels - 1}"


def target_id(task: Task, label: int | float) -> int:
    """The index of the label word to train towards: the label itself, or the rounded score (half up)."""
    if task.regression:
        return min(max(math.floor(label + 0.5), 0), task.num_labels - 1)
    return int(label)
