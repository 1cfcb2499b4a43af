"""A study (a pipeline file's targets × methods × seeds) as its run folders show it.

Which runs belong to a study; how far it got (every planned run done, running, queued, stopped or failed,
and the time left from the measured run times); and what it found: the target × method table of test
scores (mean ± std over the seeds finished, best per target, the constant-prediction floor), the stage-1
runs, and how often each source was in a grouped method's group.

Standard library only: `dtvg runs report` (and `dtvg run pipeline`) and the dashboard's study view build
their tables here, so what the dashboard shows and exports is what the report writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from dtvg_engine import bank, method_registry, slurm, tasks, workers
from dtvg_engine import config as configs
from dtvg_engine.errors import UserError
from dtvg_engine.events import Eval, Event, EventReader, Group, parse_line
from dtvg_engine.runfolder import (
    EVENTS,
    TPV,
    RunSummary,
    list_run_dirs,
    pid_alive,
    read_config,
    summarize,
    write_json_atomic,
    write_text_atomic,
)
from dtvg_engine.studyfile import grouping_of, load_experiment

SETTINGS = ("model", "prompt_length")
"""Top-level study settings a run must share to count (data_dir and device may differ)."""

PIPELINES_DIR = "_pipelines"
"""`<runs_dir>/_pipelines/`: what a runs directory's pipelines leave (their logs, studies and pids)."""

# ----- the runs of a runs directory ---------------------------------------------------------------------


class Runs:
    """A runs directory as a study reads it: every run's config (oldest run first) and, on demand, its
    summary. The report reads both from the folders; the dashboard passes what it already holds."""

    def __init__(
        self,
        runs_dir: Path,
        configs_by_id: dict[str, dict[str, Any]],
        summary: Callable[[str], RunSummary | None],
    ) -> None:
        self.runs_dir = Path(runs_dir)
        self.configs = configs_by_id
        """Run id → config, in run-id (start time) order."""
        self.summary = summary
        """Run id → its summary (None when it has none)."""

    @classmethod
    def read(cls, runs_dir: Path) -> Runs:
        """The runs of `runs_dir` from their folders (each summary read once, when first asked for)."""
        configs_by_id = {}
        for run_dir in list_run_dirs(runs_dir):
            try:
                configs_by_id[run_dir.name] = read_config(run_dir)
            except UserError:
                continue  # a folder whose config cannot be read is no run of any study
        return cls(runs_dir, configs_by_id, cache(lambda run_id: summarize(Path(runs_dir) / run_id)))

    def status(self, run_id: str) -> str | None:
        summary = self.summary(run_id)
        return summary.status if summary else None


# ----- which runs belong to a study ---------------------------------------------------------------------


def _settings(spec: dict[str, Any], table: str) -> dict[str, Any]:
    """The settings every run of a stage must have: the study's SETTINGS and its [stage1]/[stage2] table
    (but the seed, which the pipeline sets per run)."""
    shared = {key: spec[key] for key in SETTINGS if key in spec}
    return shared | {key: value for key, value in spec.get(table, {}).items() if key != "seed"}


def _has(config: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return all(config.get(key) == value for key, value in wanted.items())


def study_init_id(spec: dict[str, Any]) -> str:
    """The id of the shared init the study's runs tune from (its model, prompt length and init seed,
    with the defaults its runs get)."""
    shared = {key: spec[key] for key in ("model", "prompt_length", "init_seed") if key in spec}
    made = configs.stage1_config(spec["sources"][0], **shared)
    return configs.init_id(made["model"], made["prompt_length"], made["init_seed"])


def banked_sources(spec: dict[str, Any]) -> dict[str, bank.BankVector]:
    """The study's sources the pipeline takes from the source bank instead of training them (task →
    vector, in study order): those the bank holds for the study's init, unless it sets `bank = false`."""
    if spec.get("bank") is False:
        return {}
    ident = study_init_id(spec)
    found = {task: bank.find(ident, task) for task in spec["sources"]}
    return {task: vector for task, vector in found.items() if vector is not None}


@cache
def _entry_settings(entry: str, grouping: str) -> tuple[tuple[str, Any], ...]:
    return tuple(method_registry.entry_settings(entry, grouping).items())


def entry_of(spec: dict[str, Any], config: dict[str, Any]) -> str | None:
    """The entry of the study's `methods` a stage-2 run's config is a run of, if any (`dtvg:prefix` is
    `dtvg` with the prefix rule)."""
    grouping = grouping_of(spec)
    for entry in spec["methods"]:
        if all(config.get(key) == value for key, value in _entry_settings(entry, grouping)):
            return entry
    return None


def belongs(config: dict[str, Any], spec: dict[str, Any], entry: str, runs: Runs) -> bool:
    """Whether a stage-2 run's config is one the study plans for `entry` (target and seed aside)."""
    if config.get("stage") != "stage2" or config.get("sources") not in (spec["sources"], []):
        return False  # methods that use no sources (pt) record none
    wanted = _settings(spec, "stage2") | dict(_entry_settings(entry, grouping_of(spec)))
    seen = {**config, "steps": config.get("steps", 0) - config.get("target_stage1_steps", 0)}  # pt-fair
    if not _has(seen, wanted):
        return False
    own = (config.get("stage1_runs") or {}).get(config.get("target"))  # T_t from this seed's own shots
    return own is None or runs.configs.get(own, {}).get("seed") == config.get("seed")


def _stage2_key(spec: dict[str, Any], config: dict[str, Any], runs: Runs) -> tuple[str, str, int] | None:
    """(target, entry, seed) of a stage-2 run of the study, None for any other run."""
    target, entry, seed = config.get("target"), entry_of(spec, config), config.get("seed")
    if target in spec["targets"] and entry is not None and seed in spec["seeds"]:
        if belongs(config, spec, entry, runs):
            return target, entry, seed
    return None


@dataclass
class Study:
    """A study file and the finished runs that belong to it."""

    spec: dict[str, Any]
    runs: dict[tuple[str, str, int], Path]
    """(target, method, seed) → the newest completed stage-2 run with the study's settings."""
    sources: dict[str, Path]
    """Source task → the stage-1 run the stage-2 runs transferred from."""
    targets: dict[tuple[str, int], Path]
    """(target, seed) → the target's own stage-1 run for that seed (its vector T_t)."""
    banked: dict[str, bank.BankVector] = field(default_factory=dict)
    """Source task → the source bank's vector the stage-2 runs transferred from (`bank_sources`)."""


def find_study(spec: dict[str, Any], runs: Runs) -> Study:
    """The study's completed stage-2 runs (newest wins) and the stage-1 runs behind them."""
    found: dict[tuple[str, str, int], Path] = {}
    for run_id, config in runs.configs.items():  # oldest first, so a newer run replaces an older one
        key = _stage2_key(spec, config, runs)
        if key is not None and runs.status(run_id) == "completed":
            found[key] = runs.runs_dir / run_id
    sources: dict[str, Path] = {}
    targets: dict[tuple[str, int], Path] = {}
    banked: dict[str, bank.BankVector] = {}
    for (target, _, seed), run_dir in found.items():
        config = runs.configs[run_dir.name]
        for task, run_id in config["stage1_runs"].items():
            if task == target:
                targets[target, seed] = runs.runs_dir / run_id
            else:
                sources[task] = runs.runs_dir / run_id
        for task, shipped in (config.get("bank_sources") or {}).items():
            vector = bank.find(shipped["init_id"], task)
            if vector is not None and vector.sha256 == shipped["sha256"]:  # the vector the run used
                banked[task] = vector
    return Study(
        spec,
        found,
        {task: sources[task] for task in spec["sources"] if task in sources},
        {key: targets[key] for key in sorted(targets, key=lambda k: (spec["targets"].index(k[0]), k[1]))},
        {task: banked[task] for task in spec["sources"] if task in banked and task not in sources},
    )


# ----- progress -----------------------------------------------------------------------------------------

STATES = ("done", "running", "queued", "stopped", "failed")
"""Where a planned run is: finished, being run, not started (or queued and never launched), stopped
(resumed by the next start of the pipeline), failed or killed."""


@dataclass(frozen=True)
class Slot:
    """One run the study plans, and the run folder that fills it (None while there is none)."""

    stage: str
    """"stage1" or "stage2"."""
    task: str
    """The stage-1 task, or the stage-2 target."""
    method: str
    """The stage-2 method entry of the study (`dtvg`, `dtvg:prefix`); "pt" for stage 1."""
    seed: int | None
    """None for a source's stage-1 run, which serves every seed."""
    run_id: str | None
    state: str
    """One of STATES."""


def state_of(summary: RunSummary | None) -> str:
    """Where a run is, as the progress line counts it."""
    if summary is None:
        return "queued"
    if summary.status == "pending":  # launched (its worker is loading) or only queued by a pipeline
        return "running" if summary.pid is not None else "queued"
    return {"completed": "done", "running": "running", "stopped": "stopped"}.get(summary.status, "failed")


def _pick(candidates: list[str], runs: Runs) -> str | None:
    """The newest completed run of `candidates` (oldest first), else the newest one."""
    done = [run_id for run_id in candidates if runs.status(run_id) == "completed"]
    return (done or candidates or [None])[-1]


def plan(spec: dict[str, Any], runs: Runs) -> list[Slot]:
    """Every run the study plans, as the pipeline plans them, each with the run that fills it.

    Stage 1: each source once (but those taken from the source bank), and, when a method needs the
    target's own vector, each target once per seed on that seed's shots (the stage-2 k-shot); stage 2:
    every target × method × seed.
    """
    stage1 = _settings(spec, "stage1")
    target_stage1 = stage1 | {"k_shot": spec.get("stage2", {}).get("k_shot", stage1.get("k_shot"))}
    candidates: dict[tuple[str, str, str, int | None], list[str]] = {}
    for run_id, config in runs.configs.items():
        if config.get("stage") == "stage1":
            task = config.get("task")
            if task in spec["sources"] and _has(config, stage1):
                candidates.setdefault(("stage1", task, "pt", None), []).append(run_id)
            if task in spec["targets"] and _has(config, target_stage1):
                candidates.setdefault(("stage1", task, "pt", config.get("seed")), []).append(run_id)
        elif (key := _stage2_key(spec, config, runs)) is not None:
            candidates.setdefault(("stage2", *key), []).append(run_id)
    banked = banked_sources(spec)
    keys = [("stage1", task, "pt", None) for task in spec["sources"] if task not in banked]
    if any(method_registry.parse(method)[0].needs_target_run for method in spec["methods"]):
        keys += [("stage1", task, "pt", seed) for task in spec["targets"] for seed in spec["seeds"]]
    keys += [
        ("stage2", target, method, seed)
        for target in spec["targets"]
        for method in spec["methods"]
        for seed in spec["seeds"]
    ]
    slots = []
    for key in keys:
        run_id = _pick(candidates.get(key, []), runs)
        summary = runs.summary(run_id) if run_id else None
        slots.append(Slot(*key, run_id=run_id, state=state_of(summary)))
    return slots


def counts(slots: Iterable[Slot]) -> dict[str, int]:
    """How many planned runs are in each state (every state present, zeros included)."""
    tally = dict.fromkeys(STATES, 0)
    for slot in slots:
        tally[slot.state] += 1
    return tally


def seconds_left(spec: dict[str, Any], slots: list[Slot], runs: Runs) -> float | None:
    """The time the study still needs, from the measured seconds per step of its finished runs.

    Each stage's rate is its finished runs' time over their steps (evaluations included); a stage with
    none finished yet borrows the other's. The work left (a queued run's steps, the rest of a running or
    stopped one's) is shared by the study's `jobs` parallel runs. None until some run has finished;
    failed runs are not counted, since the pipeline does not retry them until it is started again.
    """
    spent: dict[str, list[float]] = {"stage1": [0.0, 0.0], "stage2": [0.0, 0.0]}
    for slot in slots:
        summary = runs.summary(slot.run_id) if slot.run_id and slot.state == "done" else None
        if summary and summary.duration and summary.total_steps:
            spent[slot.stage][0] += summary.duration
            spent[slot.stage][1] += summary.total_steps
    rates = {stage: seconds / steps for stage, (seconds, steps) in spent.items() if steps}
    if not rates:
        return None
    left = 0.0
    for slot in slots:
        if slot.state in ("done", "failed"):
            continue
        table = spec.get(slot.stage, {})
        total = table.get("steps", configs.TRAINING_DEFAULTS["steps"])
        summary = runs.summary(slot.run_id) if slot.run_id else None
        done = min(summary.step, total) if summary else 0
        rate = rates.get(slot.stage) or next(iter(rates.values()))
        left += (total - done) * rate
    return left / workers.parallel_runs(spec.get("jobs", "auto"))


# ----- results ------------------------------------------------------------------------------------------


_TAIL = 64 << 10
"""Bytes read from the end of an events file first: the test eval is among a run's last few events."""


def _events_of(lines: Iterable[bytes], kind: bytes, *markers: bytes) -> Iterator[Event]:
    """The events of type `kind` among `lines` (holding every one of `markers`), parsed by the schema;
    the other lines are not parsed."""
    wanted = (b'"type":"' + kind + b'"', *markers)
    events = (parse_line(line) for line in lines if all(marker in line for marker in wanted))
    return (event for event in events if event is not None)


def _last_test(lines: list[bytes]) -> Eval | None:
    tests = (e for e in _events_of(reversed(lines), b"eval", b'"test"') if isinstance(e, Eval))
    return next((e for e in tests if e.split == "test"), None)


def test_score(run_dir: Path) -> float | None:
    """A run's test score (at its best validation checkpoint): its last test `eval` event's `primary`,
    read from the end of its events file; None when it has none."""
    path = os.path.join(run_dir, EVENTS)  # os.path: a study view reads hundreds of these at once
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - _TAIL))
            chunk = f.read()
    except OSError:
        return None
    test = _last_test(chunk.split(b"\n")[1 if size > _TAIL else 0 :])  # a cut first line is no line
    if test is None and size > _TAIL:  # a run that wrote much after its test: read it whole
        test = _last_test(EventReader(path).read_lines())
    return test.primary if test else None


CONSTANT_KEY = "test_constant"
"""Key of a run's config `split` record: the best score a constant prediction gets on its test rows."""


def recorded_constant(config: dict[str, Any]) -> float | None:
    """The constant-prediction floor a run recorded with its split (None for runs made before it was)."""
    split = config.get("split")
    return _number(split.get(CONSTANT_KEY)) if isinstance(split, dict) else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


Scores = dict[tuple[str, str], dict[int, float]]
"""(target, method) → seed → test score."""


def results_rows(spec: dict[str, Any], scores: Scores) -> list[dict[str, Any]]:
    """Per target and method: the test score's mean ± (population) std over seeds, the seed count and
    each seed's score (`by_seed`, so paired differences can be read from the JSON alone); the best mean
    of each target is marked `best`."""
    rows = []
    for target in spec["targets"]:
        for method in spec["methods"]:
            by_seed = scores.get((target, method), {})
            values = list(by_seed.values())
            rows.append(
                {
                    "target": target,
                    "method": method,
                    "metric": tasks.get_task(target).primary,
                    "mean": statistics.fmean(values) if values else None,
                    "std": statistics.pstdev(values) if len(values) > 1 else 0.0 if values else None,
                    "seeds": len(values),
                    "by_seed": {str(seed): by_seed[seed] for seed in sorted(by_seed)},
                }
            )
    for target in spec["targets"]:
        ranked = [r for r in rows if r["target"] == target and r["mean"] is not None]
        if ranked:
            max(ranked, key=lambda r: r["mean"])["best"] = True
    return rows


def study_scores(study: Study, test: Callable[[Path], float | None]) -> Scores:
    """(target, method) → seed → the test score of that seed's run."""
    scores: Scores = {}
    for (target, method, seed), run_dir in study.runs.items():
        value = test(run_dir)
        if value is not None:
            scores.setdefault((target, method), {})[seed] = value
    return scores


def target_constants(study: Study, constant: Callable[[Path], float | None]) -> dict[str, float | None]:
    """Per target: the best constant score on its test splits, averaged over the seeds (every method of a
    seed is tested on the same split, so one run per seed stands for it); None without a finished run,
    or while one of them has no floor (`constant` gives None)."""
    constants: dict[str, float | None] = {}
    for target in study.spec["targets"]:
        by_seed = {seed: run for (t, _, seed), run in study.runs.items() if t == target}
        values = [constant(run) for run in by_seed.values()]
        known = [value for value in values if value is not None]
        constants[target] = statistics.fmean(known) if known and len(known) == len(values) else None
    return constants


def stage1_runs(study: Study) -> list[tuple[str, str, Path]]:
    """(task, role, run) of each source's stage-1 run, then of each target's per seed."""
    labelled = [(task, "source", run) for task, run in study.sources.items()]
    return labelled + [(task, "target", run) for (task, _), run in study.targets.items()]


def stage1_records(
    study: Study, runs: Runs, test: Callable[[Path], float | None], constant: Callable[[Path], float | None]
) -> list[tuple[Path, dict[str, Any]]]:
    """Every stage-1 run the study's transfers start from, with what the table's JSON holds of it: task,
    role ("source" or "target"), seed, test score and the constant floor of its test split (fractions)."""
    records = []
    for task, role, run_dir in stage1_runs(study):
        record = {"task": task, "role": role, "seed": runs.configs.get(run_dir.name, {}).get("seed")}
        records.append((run_dir, record | {"test": test(run_dir), "constant": constant(run_dir)}))
    return records


def pct(value: float | None) -> str:
    """A score in percent with one decimal, "—" for none."""
    return "—" if value is None else f"{100 * value:.1f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(row) + " |" for row in rows
    ]


def cell_text(row: dict[str, Any], seeds: int) -> str:
    """One cell of the table: `mean ± std`, and how many of the seeds when not all have finished."""
    if row["mean"] is None:
        return "—"
    text = f"{pct(row['mean'])} ± {pct(row['std'])}"
    return text + (f" ({row['seeds']} of {seeds} seeds)" if row["seeds"] < seeds else "")


TABLE_TITLE = (
    "## Test score (mean ± std over seeds, best per target in bold; constant: best constant prediction)"
)

JSON_KEYS = ("target", "method", "mean", "std", "seeds", "by_seed")
"""What the table's JSON holds of each row."""


@dataclass
class Results:
    """A study's results table and what it is made of: what the report writes and the dashboard shows
    and exports (`markdown`, `document`)."""

    study: Study
    rows: list[dict[str, Any]]
    """`results_rows`: per target and method, mean, std, seeds and the best mark."""
    constants: dict[str, float | None]
    """Per target: the constant-prediction floor (`target_constants`)."""
    stage1: list[tuple[Path, dict[str, Any]]]
    """The stage-1 runs and their records (`stage1_records`)."""

    @property
    def floors(self) -> list[float | None]:
        return [self.constants[target] for target in self.study.spec["targets"]]

    def averages(self) -> list[float | None]:
        """Each method's mean over the targets, then the floor's (None while a target has none)."""
        spec = self.study.spec
        cell = {(r["target"], r["method"]): r["mean"] for r in self.rows}
        means: list[float | None] = []
        for column in [[cell[t, m] for t in spec["targets"]] for m in spec["methods"]] + [self.floors]:
            known = [value for value in column if value is not None]
            means.append(sum(known) / len(known) if known and len(known) == len(column) else None)
        return means

    def table_lines(self) -> list[str]:
        """The table in Markdown, under its heading: targets × methods with the best per target in bold,
        the constant floor last, and the average row."""
        spec = self.study.spec
        cell = {(r["target"], r["method"]): r for r in self.rows}
        lines = []
        for target, floor in zip(spec["targets"], self.floors, strict=True):
            line = [f"{target} ({cell[target, spec['methods'][0]]['metric']})"]
            for method in spec["methods"]:
                text = cell_text(cell[target, method], len(spec["seeds"]))
                line.append(f"**{text}**" if cell[target, method].get("best") else text)
            lines.append([*line, pct(floor)])
        lines.append(["average", *(pct(mean) for mean in self.averages())])
        return [TABLE_TITLE, "", *markdown_table(["target", *spec["methods"], "constant"], lines)]

    @property
    def markdown(self) -> str:
        """The exported Markdown: `table_lines`, as the report holds them."""
        return "\n".join(self.table_lines()) + "\n"

    def document(self) -> dict[str, Any]:
        """The table as JSON (scores as fractions): the rows, the floor per target, the stage-1 runs."""
        rows = [{key: row[key] for key in JSON_KEYS} for row in self.rows]
        doc = {"name": self.study.spec["name"], "rows": rows, "constant": self.constants}
        banked = [
            {"task": v.task, "role": "bank", "seed": None, "test": v.primary("test"), "constant": v.constant}
            for v in self.study.banked.values()
        ]
        return doc | {"stage1": [record for _, record in self.stage1] + banked}


def results(
    study: Study, runs: Runs, test: Callable[[Path], float | None], constant: Callable[[Path], float | None]
) -> Results:
    """The study's table from each finished run's `test` score and each test split's `constant` floor."""
    return Results(
        study,
        results_rows(study.spec, study_scores(study, test)),
        target_constants(study, constant),
        stage1_records(study, runs, test, constant),
    )


# ----- stage 1 ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage1Row:
    """One stage-1 run a study's transfers start from, as the dashboard lists it."""

    task: str
    role: str
    """"source", or "target, seed S"."""
    data: str
    """"16-shot", or "full"."""
    run_id: str
    steps: int
    best: float | None
    """Best validation score."""
    test: float | None
    constant: float | None = None
    """The best constant prediction's score on the same test rows (the floor `test` is read against)."""


def bank_row(vector: bank.BankVector) -> Stage1Row:
    """A source the study takes from the source bank, with the scores it was shipped with."""
    made = vector.provenance
    return Stage1Row(
        vector.task,
        "source (bank)",
        "full",
        f"bank {made.get('source_run')}",
        int(made.get("steps") or 0),
        vector.primary("validation"),
        vector.primary("test"),
        vector.constant,
    )


def stage1_row(
    task: str, role: str, run_dir: Path, runs: Runs, test: float | None, constant: float | None = None
) -> Stage1Row:
    """How well stage 1 learned `task` in one run: its data, steps, best validation and test score.

    A target's stage-1 run is plain prompt tuning on its k shots: its test score is what the target
    reaches with no source at all.
    """
    config, summary = runs.configs.get(run_dir.name, {}), runs.summary(run_dir.name)
    return Stage1Row(
        task,
        role,
        f"{config['k_shot']}-shot" if config.get("k_shot") else "full",
        run_dir.name,
        int(config.get("steps") or 0),
        summary.best_metric if summary else None,
        test,
        constant,
    )


# ----- source groups ------------------------------------------------------------------------------------


def group_steps(run_dir: Path) -> list[tuple[int, tuple[str, ...]]]:
    """(step, selected sources) of every `group` event of a run (only those lines are parsed)."""
    groups = list(_events_of(EventReader(Path(run_dir) / EVENTS).read_lines(), b"group"))
    return [(e.step, tuple(e.selected)) for e in groups if isinstance(e, Group)]


def trajectory(steps: list[tuple[int, tuple[str, ...]]]) -> list[tuple[int, tuple[str, ...]]]:
    """The steps where the group changed as a set (and the first); a mere re-ranking is no change."""
    return [
        (step, group) for i, (step, group) in enumerate(steps) if i == 0 or set(group) != set(steps[i - 1][1])
    ]


def source_shares(steps: list[tuple[int, tuple[str, ...]]], sources: list[str]) -> list[float]:
    """For each source, the share of the steps it was in the group (0 for a run without group events)."""
    return [sum(s in group for _, group in steps) / len(steps) if steps else 0.0 for s in sources]


# ----- the similarity of the stage-1 vectors -------------------------------------------------------------


def vector_files(
    spec: dict[str, Any],
    sources: dict[str, Path],
    targets: dict[tuple[str, int], Path],
    banked: dict[str, bank.BankVector] | None = None,
) -> dict[str, Path]:
    """The stage-1 vectors the report compares: every source's (a local run's, or the source bank's,
    checked against its sha256), and each target's of the first seed."""
    banked = banked or {}
    files = {}
    for task in spec["sources"]:
        if task in sources:
            files[task] = sources[task] / TPV
        elif task in banked:
            files[task] = bank.verified(banked[task].path, banked[task].sha256)
    first = spec["seeds"][0]
    return files | {target: run / TPV for (target, seed), run in targets.items() if seed == first}


# ----- finding studies ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyFile:
    """A study the dashboard can open: a pipeline file, or the study a pipeline recorded in a runs dir."""

    name: str
    path: Path | None
    """The TOML file, or the record in `<runs_dir>/_pipelines/`; None for results without either."""
    results: bool
    """Whether the runs directory holds its pipeline results (`<name>-results.json`)."""


def record_path(runs_dir: Path, name: str) -> Path:
    """Where a pipeline records the study it runs: `<runs_dir>/_pipelines/<name>.json`."""
    return Path(runs_dir) / PIPELINES_DIR / f"{name}.json"


def record_study(runs_dir: Path, spec: dict[str, Any], path: Path) -> None:
    """What a pipeline leaves as it starts: the study it runs (as resolved, `--data-dir` included) and
    its file, so that the study can be opened and started again without the file at hand, and its own
    pid, so that the study can be stopped however the pipeline was started."""
    record = record_path(runs_dir, spec["name"])
    record.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, {"file": str(Path(path).resolve()), "spec": spec})
    write_text_atomic(_pidfile(runs_dir, spec["name"]), f"{os.getpid()}\n")


def forget_study(runs_dir: Path, name: str) -> None:
    """Remove what `record_study` left, for a pipeline that started nothing (sbatch refused it)."""
    record_path(runs_dir, name).unlink(missing_ok=True)
    _pidfile(runs_dir, name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # gone only when empty: other studies' records stay
        (Path(runs_dir) / PIPELINES_DIR).rmdir()


def read_record(path: Path) -> tuple[dict[str, Any], Path | None]:
    """A pipeline's record: the study and its file (None when the file is gone)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        spec, file = record["spec"], Path(record["file"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read the study record {path} ({e}); run its pipeline file again") from None
    if not isinstance(spec, dict) or not all(isinstance(spec.get(k), list) for k in ("targets", "methods")):
        raise UserError(f"{path} is not a study record; run its pipeline file again")
    return spec, file if file.is_file() else None


def load_study(path: Path) -> tuple[dict[str, Any], Path | None]:
    """A study and the pipeline file that runs it, from that TOML file (checked as the pipeline checks
    it) or from a pipeline's record in a runs directory."""
    path = Path(path)
    return read_record(path) if path.suffix == ".json" else (load_experiment(path), path)


def find_studies(runs_dir: Path, folders: Iterable[Path]) -> list[StudyFile]:
    """The studies to offer: pipeline files (`*.toml`) in `folders`, the studies the runs directory's
    pipelines recorded, and any whose results it holds; one per name, a file before a record."""
    runs_dir = Path(runs_dir)
    results = {p.name[: -len("-results.json")] for p in runs_dir.glob("*-results.json")}
    found: dict[str, StudyFile] = {}
    files = [p for folder in folders for p in sorted(Path(folder).glob("*.toml"))]
    for path in [*files, *sorted((runs_dir / PIPELINES_DIR).glob("*.json"))]:
        try:
            name = load_study(path)[0]["name"]
        except UserError:
            continue  # not a study file (or a broken one): nothing to open
        found.setdefault(name, StudyFile(name, path, name in results))
    for name in sorted(results - set(found)):
        found[name] = StudyFile(name, None, True)
    return sorted(found.values(), key=lambda s: s.name)


# ----- the study's pipeline process ---------------------------------------------------------------------


def _pidfile(runs_dir: Path, name: str) -> Path:
    return Path(runs_dir) / PIPELINES_DIR / f"{name}.pid"


def _jobfile(runs_dir: Path, name: str) -> Path:
    return Path(runs_dir) / PIPELINES_DIR / f"{name}.slurm.json"


def record_pipeline_job(runs_dir: Path, name: str, record: dict[str, Any]) -> None:
    """Record the Slurm job that runs the rest of the study's pipeline (`job_id`, `folder`), so the study
    is seen running, and can be stopped, while no pipeline process lives anywhere."""
    write_json_atomic(_jobfile(runs_dir, name), record)


def pipeline_job(runs_dir: Path, name: str) -> dict[str, Any] | None:
    """The record of the Slurm job running the rest of the study's pipeline while it is in the queue
    (or squeue cannot tell), else None."""
    try:
        record = json.loads(_jobfile(runs_dir, name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and slurm.job_state(record) is not None else None


def pipeline_running(runs_dir: Path, name: str) -> str | None:
    """Where the study's pipeline runs, "pid N" or "Slurm job N", or None when it does not."""
    pid = pipeline_pid(runs_dir, name)
    job = pipeline_job(runs_dir, name) if pid is None else None
    return f"pid {pid}" if pid is not None else f"Slurm job {job['job_id']}" if job else None


def pipeline_pid(runs_dir: Path, name: str) -> int | None:
    """The pid of the study's pipeline while it runs, else None.

    A pid is only believed while its process is a `dtvg run pipeline` (pids are reused).
    """
    try:
        pid = int(_pidfile(runs_dir, name).read_text().strip())
    except (OSError, ValueError):
        return None
    if not pid_alive(pid):
        return None
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid  # no /proc (macOS): the pid is alive, trust it
    return pid if b"dtvg" in command and b"pipeline" in command else None


def start_pipeline(path: Path, runs_dir: Path, data_dir: str | None = None) -> tuple[int, Path]:
    """Start (or resume) the study of pipeline file `path` as `dtvg run pipeline` in its own process
    group, as `dtvg run pipeline` in a terminal would; return its pid and its log file.

    The pipeline reuses finished runs and resumes stopped ones, so starting a study again resumes it.
    `data_dir` is the `--data-dir` it ran with before (runs of another data dir are other runs).
    """
    from dtvg_engine import launcher

    name = load_experiment(path)["name"]
    running = pipeline_running(runs_dir, name)
    if running is not None:
        raise UserError(f"study {name} is already running (pipeline {running})")
    folder = Path(runs_dir) / PIPELINES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}.log"
    command = [sys.executable, "-m", "dtvg_engine.cli", "run", "pipeline", str(Path(path).resolve())]
    command += ["--runs-dir", str(Path(runs_dir).resolve())]
    command += ["--data-dir", data_dir] if data_dir else []
    child = launcher.spawn_detached(command, log)
    write_text_atomic(_pidfile(runs_dir, name), f"{child.pid}\n")  # the pipeline writes it too, as it starts
    return child.pid, log


def stop_study(spec: dict[str, Any], runs_dir: Path) -> tuple[bool, int]:
    """Stop the study: end its pipeline first (so it starts no further run), then ask each of the study's
    runs that is still running to stop gracefully (checkpoint, status stopped) and cancel those still
    queued on Slurm. Returns whether a pipeline was running (a process, or a Slurm job waiting to run
    the rest of it) and how many runs were asked to stop; starting the study again resumes them."""
    from dtvg_engine import launcher

    pid = pipeline_pid(runs_dir, spec["name"])
    if pid is not None:
        try:
            os.kill(pid, signal.SIGTERM)  # the pipeline alone: its workers run in their own sessions
        except ProcessLookupError:
            pass
        launcher.wait_for_exit(pid, timeout=10)
    # before its runs: once they end, the job that waits for them would submit the next stage
    job_cancelled = slurm.cancel(pipeline_job(runs_dir, spec["name"]))
    runs = Runs.read(runs_dir)  # read after the pipeline ended: it may have launched a run just before
    live = [  # queued: waiting for a worker here (nothing to stop), or in Slurm's queue (cancelled)
        runs.runs_dir / slot.run_id
        for slot in plan(spec, runs)
        if slot.state in ("running", "queued") and slot.run_id
    ]
    return pid is not None or job_cancelled, sum(1 for run_dir in live if launcher.stop_run(run_dir))
