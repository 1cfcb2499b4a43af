"""The study file (`dtvg run pipeline experiment.toml`): read and checked once into a `StudySpec`.

The plan (`studyplan.plan`) is computed from a spec; the pipeline runs it, the study view, `dtvg runs
report` and the dashboard read it. Standard library only (the dashboard opens study files). The file's
format: docs/architecture.md, "Studies".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dtvg_engine import config as configs
from dtvg_engine.errors import UserError
from dtvg_engine.method import method_registry
from dtvg_engine.runs import slurm
from dtvg_engine.train import tasks

STUDY_KEYS = (
    "name",
    "sources",
    "targets",
    "methods",
    "seeds",
    "jobs",
    "stage1",
    "stage2",
    "slurm",
    "bank",
    "tasks",
)
"""The top-level keys that shape the study (its runs' settings are the others)."""
SHARED_KEYS = tuple(key for key, f in configs.SETTINGS_BY_KEY.items() if f.metadata.get("shared"))
"""Top-level settings that apply to every run of the study (`shared` in `config.TrainingSettings`)."""
TOP_KEYS = set(STUDY_KEYS) | set(SHARED_KEYS)
STAGE_TABLES = {
    "stage1": set(configs.TRAINING_DEFAULTS) - set(SHARED_KEYS),
    "stage2": set(configs.SETTINGS_BY_KEY) - set(SHARED_KEYS) - {"method"},
}
"""The settings a study's `[stage1]` and `[stage2]` tables take (the methods come from `methods`)."""


BANK_RULE = configs.Rule(bool)
"""`bank = true|false`: whether the sources the source bank holds for the study's init come from it."""

NAME_LIMIT = 200
"""The longest study name: `<name>-results.json` must still fit a file name (255 bytes)."""

TASK_LISTS = ("sources", "targets", "methods")
_EXAMPLES = {  # shown when a list is malformed
    "sources": '["mnli", "qnli"]',
    "targets": '["rte"]',
    "methods": '["pt", "dtvg"]',
    "seeds": "[0, 1, 2]",
}


@dataclass(frozen=True)
class StudySpec:
    """A study: its tasks, method entries and seeds, and the settings its runs get."""

    name: str
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    methods: tuple[str, ...]
    """Method entries as the file lists them: a registered method, optionally with its grouping rule
    (`dtvg:prefix`)."""
    seeds: tuple[int, ...]
    jobs: int | str = "auto"
    bank: bool = True
    """Whether the sources the source bank holds for the study's init come from it."""
    shared: dict[str, Any] = field(default_factory=dict, hash=False)
    """The top-level settings every run gets (`SHARED_KEYS`; `data_dir` as `--data-dir` resolved it)."""
    stage1: dict[str, Any] = field(default_factory=dict, hash=False)
    """The `[stage1]` table."""
    stage2: dict[str, Any] = field(default_factory=dict, hash=False)
    """The `[stage2]` table."""
    slurm: dict[str, Any] = field(default_factory=dict, hash=False)
    """The `[slurm]` table."""

    @classmethod
    def of(cls, checked: dict[str, Any]) -> StudySpec:
        """The spec of a checked study file's table, or of the record a pipeline left of one (a record
        made before `bank` and `jobs` were recorded gets their defaults)."""
        return cls(
            name=checked["name"],
            sources=tuple(checked["sources"]),
            targets=tuple(checked["targets"]),
            methods=tuple(checked["methods"]),
            seeds=tuple(checked.get("seeds", (0,))),
            jobs=checked.get("jobs", "auto"),
            bank=checked.get("bank", True),
            shared=shared_settings(checked),
            stage1=dict(checked.get("stage1") or {}),
            stage2=dict(checked.get("stage2") or {}),
            slurm=dict(checked.get("slurm") or {}),
        )

    def record(self) -> dict[str, Any]:
        """The spec as the study file spells it (what a pipeline records in `_pipelines/<name>.json`)."""
        tables = {key: table for key in ("stage1", "stage2", "slurm") if (table := getattr(self, key))}
        lists = {key: list(getattr(self, key)) for key in (*TASK_LISTS, "seeds")}
        return {"name": self.name, **lists, "jobs": self.jobs, "bank": self.bank, **self.shared, **tables}

    def with_data_dir(self, data_dir: str) -> StudySpec:
        """The study on the data of `--data-dir`."""
        return dataclasses.replace(self, shared={**self.shared, "data_dir": data_dir})

    @property
    def grouping(self) -> str:
        """The grouping rule of the study's grouped entries that name none (`dtvg`)."""
        return default_grouping(self.stage2)


def load_experiment(path: Path) -> StudySpec:
    """Read and check an experiment file; every mistake is a one-line UserError naming the key."""
    spec = tasks.read_toml(path, "experiment file")
    unknown = set(spec) - TOP_KEYS
    if unknown:
        raise UserError(
            f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(TOP_KEYS))}"
        )
    use_study_tasks(path, spec.get("tasks"))
    spec.setdefault("name", path.stem)
    spec.setdefault("seeds", [0])
    spec.setdefault("jobs", "auto")
    _check_name(spec["name"], f"{path}: name")
    for key in TASK_LISTS:
        _check_list(path, key, spec.get(key), str)
    _check_list(path, "seeds", spec["seeds"], int)
    for seed in spec["seeds"]:
        configs.check_value(f"{path}: seeds", seed, configs.SETTING_RULES["seed"])
    spec["jobs"] = configs.parse_jobs(f"{path}: jobs", spec["jobs"])
    configs.check_value(f"{path}: bank", spec.setdefault("bank", True), BANK_RULE)
    configs.check_settings(shared_settings(spec), label=lambda key: f"{path}: {key}")
    for task in spec["sources"] + spec["targets"]:
        tasks.get_task(task)
    _check_methods(path, spec)
    overlap = set(spec["sources"]) & set(spec["targets"])
    if overlap:
        raise UserError(f"{path}: {', '.join(sorted(overlap))} listed as both source and target")
    for table, allowed in STAGE_TABLES.items():
        settings = spec.get(table, {})
        if not isinstance(settings, dict):
            raise UserError(f"{path}: {table} must be a table ([{table}] followed by key = value lines)")
        bad = set(settings) - allowed
        if bad:
            raise UserError(f"{path}: unknown key(s) in [{table}]: {', '.join(sorted(bad))}")
        configs.check_settings(settings, label=lambda key, table=table: f"{path}: [{table}] {key}")
    if not isinstance(spec.get("slurm", {}), dict):
        raise UserError(f"{path}: slurm must be a table ([slurm] followed by key = value lines)")
    slurm.Resources.from_table(spec.get("slurm", {}), str(path))
    return StudySpec.of(spec)


def use_study_tasks(path: Path, value: Any) -> None:
    """Make a study's own tasks known: `tasks = "FILE"` (a task file, relative to the study file) or
    inline `[tasks.NAME]` tables (their `data` relative to the study file); without either, those of
    $DTVG_TASKS, so a report or a Slurm job reading the study later finds them too."""
    if value is None:
        tasks.use_file(None)
        return
    if isinstance(value, str):
        tasks.use(tasks.load_task_file(path.parent / value))
    else:
        tasks.use(tasks.parse_tasks(value, str(path), path.resolve().parent))


def _check_methods(path: Path, spec: dict[str, Any]) -> None:
    """Every entry of `methods` is a registered method, optionally with its grouping rule
    (`dtvg:prefix`), and no two entries name the same runs (`dtvg` is `dtvg:greedy` by default)."""
    stage2 = spec.get("stage2", {})
    grouping = default_grouping(stage2) if isinstance(stage2, dict) else ""
    seen: dict[tuple[tuple[str, Any], ...], str] = {}
    for entry in spec["methods"]:
        try:
            settings = tuple(sorted(method_registry.entry_settings(entry, grouping).items()))
        except UserError as exc:
            raise UserError(f"{path}: methods: {exc}") from None
        if settings in seen:
            raise UserError(f"{path}: methods lists {seen[settings]} and {entry}, which are the same runs")
        seen[settings] = entry


def _check_name(name: Any, label: str) -> None:
    """Refuse a study name that is not a plain file name: results go to `<runs_dir>/<name>-results.*`,
    so a name with a folder in it (`../x`, `/tmp/x`) would write outside the runs directory, and one
    that is blank, padded or starts with "." (hidden, as the runs directory's own files are) would be
    hard to tell apart or to find."""
    plain = (
        isinstance(name, str)
        and 0 < len(name) <= NAME_LIMIT
        and name.strip() == name
        and not name.startswith(".")
        and not any(c in name for c in "/\\")
        and name.isprintable()
    )
    if not plain:
        raise UserError(
            f"{label} must be a plain file name (no folders, no leading '.' or spaces, at most "
            f"{NAME_LIMIT} characters), got {name!r}"
        )


def _check_list(path: Path, key: str, value: Any, kind: type) -> None:
    """A study's list of tasks, methods or seeds: non-empty, of `kind`, each entry once."""
    noun = "integers" if kind is int else "names"
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value)
    ):
        raise UserError(
            f"{path}: {key} must be a non-empty list of {noun}, e.g. {key} = {_EXAMPLES[key]} (got {value!r})"
        )
    twice = sorted({str(v) for v in value if value.count(v) > 1})
    if twice:
        raise UserError(f"{path}: {key} lists {', '.join(twice)} more than once")


def shared_settings(spec: dict[str, Any]) -> dict[str, Any]:
    """The study's top-level settings that every one of its runs gets (`SHARED_KEYS`)."""
    return {key: spec[key] for key in SHARED_KEYS if key in spec}


def default_grouping(stage2: dict[str, Any]) -> str:
    """The grouping rule of a study's grouped entries that name none: its `[stage2]` one, else the
    default."""
    return stage2.get("grouping", configs.STAGE2_DEFAULTS["grouping"])
