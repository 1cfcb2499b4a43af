"""A study (a pipeline file's targets × methods × seeds) as its run folders show it.

Which run fills each slot of the study's plan (`studyplan.plan`; a run records the slot it was made
for); how far it got (every planned run done, running, queued, stopped or failed,
and the time left from the measured run times); and what it found: the target × method table of test
scores (mean ± std over the seeds finished, best per target, the constant-prediction floor), the stage-1
runs, and how often each source was in a grouped method's group.

Standard library only: `dtvg runs report` (and `dtvg run pipeline`) and the dashboard's study view build
their tables here, so what the dashboard shows and exports is what the report writes.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from dtvg_engine import config as configs
from dtvg_engine.errors import UserError
from dtvg_engine.method import bank, method_registry
from dtvg_engine.runs import workers
from dtvg_engine.runs.events import Eval, Event, EventReader, Group, parse_line
from dtvg_engine.runs.runfolder import EVENTS, TPV, list_run_dirs, missing_stage1_runs, read_config
from dtvg_engine.runs.runstatus import RunSummary, summarize
from dtvg_engine.runs.safefiles import open_file
from dtvg_engine.studies import studyplan as plans
from dtvg_engine.studies.studyfile import StudySpec
from dtvg_engine.studies.studyplan import SlotKey
from dtvg_engine.train import tasks

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


# ----- which runs fill a study's slots -----------------------------------------------------------------

MATCHED = ("model", "prompt_length")
"""The study's top-level settings a run must share to fill one of its slots (data_dir and device may
differ)."""


def slot_of(config: dict[str, Any], spec: StudySpec) -> SlotKey | None:
    """The slot of `spec` a run was made for: the one its config records (`"slot"`), when it names
    this study; else the one `legacy_slot_of` matches it to."""
    recorded = config.get("slot")
    if isinstance(recorded, dict) and recorded.get("study") == spec.name:
        key = recorded.get("stage"), recorded.get("task"), recorded.get("entry"), recorded.get("seed")
        if all(isinstance(part, str) for part in key[:3]) and isinstance(key[3], int | None):
            return key
    return legacy_slot_of(config, spec)


def legacy_slot_of(config: dict[str, Any], spec: StudySpec) -> SlotKey | None:
    """The slot of a run that records none (made before runs recorded their slot, by `dtvg run stage2`,
    or for another study with the same settings, which the pipeline reuses): a stage-1 run of a source
    or of a target and its seed; a stage-2 run of the first entry of `methods` whose method (and
    grouping rule) it has. `fits` then checks its settings, as for every run."""
    if config.get("stage") == "stage1":
        task = config.get("task")
        return "stage1", task, "pt", None if task in spec.sources else config.get("seed")
    if config.get("stage") == "stage2":
        for entry in spec.methods:
            if _has(config, method_registry.entry_settings(entry, spec.grouping)):
                return "stage2", config.get("target"), entry, config.get("seed")
    return None


def _has(config: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return all(config.get(key) == value for key, value in wanted.items())


def fits(config: dict[str, Any], slot: plans.Slot, spec: StudySpec, runs: Runs) -> bool:
    """Whether a run has the settings the study gives `slot`: the study's `MATCHED` settings, the
    stage's table (a source's seed aside: its run serves every seed), the target run's k-shot, and the
    entry's method and grouping rule. A `fair_budget` run's `steps` hold its T_t's steps too; a
    stage-2 run's T_t must be its own seed's."""
    shared = {key: spec.shared[key] for key in MATCHED if key in spec.shared}
    given = {key: value for key, value in slot.settings.items() if key not in spec.shared}
    if slot.seed is None:
        given.pop("seed", None)
    wanted = shared | given | slot.fixed(spec.grouping)
    if config.get("stage") != slot.stage:
        return False
    if slot.stage == "stage1":
        return _has(config, wanted)
    if config.get("sources") not in (list(spec.sources), []):  # methods that use no sources record none
        return False
    seen = {**config, "steps": config.get("steps", 0) - config.get("target_stage1_steps", 0)}
    # T_t from this seed's own shots (unknown when its run was removed: the report says it is missing)
    own = runs.configs.get((config.get("stage1_runs") or {}).get(config.get("target")))
    return _has(seen, wanted) and (own is None or own.get("seed") == config.get("seed"))


def join(spec: StudySpec, slots: list[plans.Slot], runs: Runs) -> dict[SlotKey, list[str]]:
    """Slot → the runs that fill it (oldest first): each run goes to the slot it was made for
    (`slot_of`), if it has that slot's settings (`fits`); a slot planned as another's run (`same_as`)
    gets that slot's runs."""
    planned = {slot.key: slot for slot in slots}
    found: dict[SlotKey, list[str]] = {}
    for run_id, config in runs.configs.items():
        key = slot_of(config, spec)
        slot = planned.get(key) if key is not None else None
        if slot is not None and slot.same_as is None and fits(config, slot, spec, runs):
            found.setdefault(slot.key, []).append(run_id)
    return {slot.key: found.get(slot.same_as or slot.key, []) for slot in slots}


@dataclass
class Study:
    """A study file and the finished runs that belong to it."""

    spec: StudySpec
    runs: dict[tuple[str, str, int], Path]
    """(target, method, seed) → the newest completed stage-2 run with the study's settings."""
    sources: dict[str, Path]
    """Source task → the stage-1 run the stage-2 runs transferred from."""
    targets: dict[tuple[str, int], Path]
    """(target, seed) → the target's own stage-1 run for that seed (its vector T_t)."""
    banked: dict[str, bank.BankVector] = field(default_factory=dict)
    """Source task → the source bank's vector the stage-2 runs transferred from (`bank_sources`)."""
    missing: dict[str, str] = field(default_factory=dict)
    """Run id → task of each stage-1 run the stage-2 runs transferred from that is no longer there."""


def find_study(spec: StudySpec, runs: Runs) -> Study:
    """The study's completed stage-2 runs (newest wins) and the stage-1 runs behind them."""
    slots = plans.plan(spec, {})  # every slot: a source the bank holds has none, and no run to find
    filled = join(spec, slots, runs)
    done = {
        key: [run_id for run_id in ids if runs.status(run_id) == "completed"] for key, ids in filled.items()
    }
    return study_of(spec, {key: runs.runs_dir / ids[-1] for key, ids in done.items() if ids}, runs)


def study_of(spec: StudySpec, filled: dict[SlotKey, Path], runs: Runs) -> Study:
    """The study of these slots' runs: its completed stage-2 runs, and the stage-1 runs (and source-bank
    vectors) they transferred from."""
    found = {
        (task, entry, seed): run_dir
        for (stage, task, entry, seed), run_dir in filled.items()
        if stage == "stage2" and seed is not None and runs.status(run_dir.name) == "completed"
    }
    sources: dict[str, Path] = {}
    targets: dict[tuple[str, int], Path] = {}
    banked: dict[str, bank.BankVector] = {}
    missing: dict[str, str] = {}
    for (target, _, seed), run_dir in found.items():
        config = runs.configs.get(run_dir.name, {})
        gone = missing_stage1_runs(runs.runs_dir, config)
        missing |= {run_id: task for task, run_id in gone.items()}
        for task, run_id in (config.get("stage1_runs") or {}).items():
            if task in gone:
                continue
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
        {task: sources[task] for task in spec.sources if task in sources},
        {key: targets[key] for key in sorted(targets, key=lambda k: (spec.targets.index(k[0]), k[1]))},
        {task: banked[task] for task in spec.sources if task in banked and task not in sources},
        missing,
    )


# ----- progress -----------------------------------------------------------------------------------------

STATES = ("done", "running", "queued", "stopped", "failed")
"""Where a planned run is: finished, being run, not started (or queued and never launched), stopped
(resumed by the next start of the pipeline), failed or killed."""


@dataclass(frozen=True)
class Filled:
    """One slot of the study's plan, and the run folder that fills it (None while there is none)."""

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
    shared: bool = False
    """Its run is another slot's too (`studyplan.Slot.same_as`): counted once in the time left."""


def state_of(summary: RunSummary | None) -> str:
    """Where a run is, as the progress line counts it."""
    if summary is None:
        return "queued"
    if summary.status == "pending":  # launched (its worker is loading) or only queued by a pipeline
        return "running" if summary.pid is not None else "queued"
    live = {"running": "running", "suspended": "running"}  # suspended: its worker holds it, stopped
    return {"completed": "done", **live, "stopped": "stopped"}.get(summary.status, "failed")


def _pick(candidates: list[str], runs: Runs) -> str | None:
    """The newest completed run of `candidates` (oldest first), else the newest one."""
    done = [run_id for run_id in candidates if runs.status(run_id) == "completed"]
    return (done or candidates or [None])[-1]


def fill(spec: StudySpec, runs: Runs) -> list[Filled]:
    """Every slot of the study's plan (`studyplan.plan`), each with the run that fills it."""
    slots = plans.plan(spec)
    filled = join(spec, slots, runs)
    found = []
    for slot in slots:
        run_id = _pick(filled[slot.key], runs)
        summary = runs.summary(run_id) if run_id else None
        state = state_of(summary)
        found.append(Filled(*slot.key, run_id=run_id, state=state, shared=slot.same_as is not None))
    return found


def counts(slots: Iterable[Filled]) -> dict[str, int]:
    """How many planned runs are in each state (every state present, zeros included)."""
    tally = dict.fromkeys(STATES, 0)
    for slot in slots:
        tally[slot.state] += 1
    return tally


def seconds_left(spec: StudySpec, slots: list[Filled], runs: Runs) -> float | None:
    """The time the study still needs, from the measured seconds per step of its finished runs.

    Each stage's rate is its finished runs' time over their steps (evaluations included); a stage with
    none finished yet borrows the other's. The work left (a queued run's steps, the rest of a running or
    stopped one's) is shared by the study's `jobs` parallel runs. None until some run has finished;
    failed runs are not counted, since the pipeline does not retry them until it is started again, and
    a run that fills two slots is counted once.
    """
    slots = [slot for slot in slots if not slot.shared]
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
        table = spec.stage1 if slot.stage == "stage1" else spec.stage2
        total = table.get("steps", configs.TRAINING_DEFAULTS["steps"])
        summary = runs.summary(slot.run_id) if slot.run_id else None
        done = min(summary.step, total) if summary else 0
        rate = rates.get(slot.stage) or next(iter(rates.values()))
        left += (total - done) * rate
    return left / workers.parallel_runs(spec.jobs)


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
        with open_file(path) as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - _TAIL))
            chunk = f.read()
    except OSError:
        return None
    test = _last_test(chunk.split(b"\n")[1 if size > _TAIL else 0 :])  # a cut first line is no line
    if test is None and size > _TAIL:  # a run that wrote much after its test: read it all, a chunk at a time
        for lines in EventReader(path).chunks():
            test = _last_test(lines) or test
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
MetricScores = dict[tuple[str, str], dict[int, dict[str, float]]]
"""(target, method) → seed → every metric of that seed's test evaluation."""


def seed_stats(by_seed: dict[int, float]) -> dict[str, Any]:
    """Mean ± (population) std over seeds, the seed count and each seed's value (`by_seed`, keyed by the
    seed as text, so paired differences can be read from the JSON alone)."""
    values = list(by_seed.values())
    return {
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.pstdev(values) if len(values) > 1 else 0.0 if values else None,
        "seeds": len(values),
        "by_seed": {str(seed): by_seed[seed] for seed in sorted(by_seed)},
    }


def results_rows(
    spec: StudySpec, scores: Scores, metrics: MetricScores | None = None
) -> list[dict[str, Any]]:
    """Per target and method: the test score's `seed_stats`; the best mean of each target is marked
    `best`. A generation target's row also holds each metric's `seed_stats` under `metrics` (BLEU and
    ROUGE: the score is their mean), from `metrics` when given."""
    rows = []
    for target in spec.targets:
        generation = metrics is not None and tasks.get_task(target).generation
        for method in spec.methods:
            row = {"target": target, "method": method, "metric": tasks.get_task(target).primary}
            row |= seed_stats(scores.get((target, method), {}))
            if generation:
                by_seed = metrics.get((target, method), {})
                names = dict.fromkeys(name for values in by_seed.values() for name in values)
                row["metrics"] = {
                    name: seed_stats({seed: v[name] for seed, v in by_seed.items() if name in v})
                    for name in names
                }
            rows.append(row)
    for target in spec.targets:
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


def study_metrics(study: Study, metrics: Callable[[Path], dict[str, float]]) -> MetricScores:
    """(target, method) → seed → every test metric of that seed's run, for the generation targets."""
    found: MetricScores = {}
    for (target, method, seed), run_dir in study.runs.items():
        values = metrics(run_dir) if tasks.get_task(target).generation else {}
        if values:
            found.setdefault((target, method), {})[seed] = values
    return found


def target_constants(study: Study, constant: Callable[[Path], float | None]) -> dict[str, float | None]:
    """Per target: the best constant score on its test splits, averaged over the seeds (every method of a
    seed is tested on the same split, so one run per seed stands for it); None without a finished run,
    or while one of them has no floor (`constant` gives None)."""
    constants: dict[str, float | None] = {}
    for target in study.spec.targets:
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


@dataclass
class Results:
    """A study's results table and what it is made of: what the report writes and the dashboard shows
    and exports (`markdown`, `document`)."""

    study: Study
    rows: list[dict[str, Any]]
    """`results_rows`: per target and method, its metric, mean, std, seeds (each seed's score in
    `by_seed`) and the best mark (`best`, on the best row of each target only); a generation target's
    rows may hold each metric's (`metrics`)."""
    constants: dict[str, float | None]
    """Per target: the constant-prediction floor (`target_constants`)."""
    stage1: list[tuple[Path, dict[str, Any]]]
    """The stage-1 runs and their records (`stage1_records`)."""

    @property
    def floors(self) -> list[float | None]:
        return [self.constants[target] for target in self.study.spec.targets]

    def averages(self) -> list[float | None]:
        """Each method's mean over the targets, then the floor's (None while a target has none)."""
        spec = self.study.spec
        cell = {(r["target"], r["method"]): r["mean"] for r in self.rows}
        means: list[float | None] = []
        for column in [[cell[t, m] for t in spec.targets] for m in spec.methods] + [self.floors]:
            known = [value for value in column if value is not None]
            means.append(sum(known) / len(known) if known and len(known) == len(column) else None)
        return means

    def table_lines(self) -> list[str]:
        """The table in Markdown, under its heading: targets × methods with the best per target in bold,
        the constant floor last, and the average row."""
        spec = self.study.spec
        cell = {(r["target"], r["method"]): r for r in self.rows}
        lines = []
        for target, floor in zip(spec.targets, self.floors, strict=True):
            line = [f"{target} ({cell[target, spec.methods[0]]['metric']})"]
            for method in spec.methods:
                text = cell_text(cell[target, method], len(spec.seeds))
                line.append(f"**{text}**" if cell[target, method].get("best") else text)
            lines.append([*line, pct(floor)])
        lines.append(["average", *(pct(mean) for mean in self.averages())])
        return [TABLE_TITLE, "", *markdown_table(["target", *spec.methods, "constant"], lines)]

    @property
    def markdown(self) -> str:
        """The exported Markdown: `table_lines`, as the report holds them."""
        return "\n".join(self.table_lines()) + "\n"

    def document(self) -> dict[str, Any]:
        """The table as JSON (scores as fractions): the rows, the floor per target, the stage-1 runs."""
        doc = {"name": self.study.spec.name, "rows": self.rows, "constant": self.constants}
        banked = [
            {"task": v.task, "role": "bank", "seed": None, "test": v.primary("test"), "constant": v.constant}
            for v in self.study.banked.values()
        ]
        return doc | {"stage1": [record for _, record in self.stage1] + banked}


def results(
    study: Study,
    runs: Runs,
    test: Callable[[Path], float | None],
    constant: Callable[[Path], float | None],
    metrics: Callable[[Path], dict[str, float]] | None = None,
) -> Results:
    """The study's table from each finished run's `test` score and each test split's `constant` floor;
    with `metrics` (every metric of a run's test evaluation), a generation target's rows hold each one."""
    return Results(
        study,
        results_rows(
            study.spec, study_scores(study, test), study_metrics(study, metrics) if metrics else None
        ),
        target_constants(study, constant),
        stage1_records(study, runs, test, constant),
    )


def table_of(spec: StudySpec, filled: dict[SlotKey, Path], runs: Runs) -> Results:
    """The table of the runs a pipeline gave the study's slots: each run's test score and the floor it
    recorded with its split (what the dashboard reads)."""
    return results(
        study_of(spec, filled, runs),
        runs,
        test_score,
        lambda run_dir: recorded_constant(runs.configs.get(run_dir.name, {})),
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
    chunks = EventReader(Path(run_dir) / EVENTS).chunks()
    groups = (event for lines in chunks for event in _events_of(lines, b"group"))
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
    spec: StudySpec,
    sources: dict[str, Path],
    targets: dict[tuple[str, int], Path],
    banked: dict[str, bank.BankVector] | None = None,
) -> dict[str, Path]:
    """The stage-1 vectors the report compares: every source's (a local run's, or the source bank's,
    checked against its sha256), and each target's of the first seed."""
    banked = banked or {}
    files = {}
    for task in spec.sources:
        if task in sources:
            files[task] = sources[task] / TPV
        elif task in banked:
            files[task] = bank.verified(banked[task].path, banked[task].sha256)
    first = spec.seeds[0]
    return files | {target: run / TPV for (target, seed), run in targets.items() if seed == first}
