"""What a study found: the target × method table of test scores (mean ± std over the seeds finished,
best per target, the constant-prediction floor), the stage-1 runs, how often each source was in a
grouped method's group, and the stage-1 vectors the report compares.

Standard library only: `dtvg runs report` (and `dtvg run pipeline`) and the dashboard's study view
build their tables here, so what the dashboard shows and exports is what the report writes.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtvg_engine.method import bank
from dtvg_engine.runs.events import Eval, Event, EventReader, Group, parse_line
from dtvg_engine.runs.runfolder import EVENTS, TPV
from dtvg_engine.runs.safefiles import open_file
from dtvg_engine.studies.study import Runs, Study, study_of
from dtvg_engine.studies.studyfile import StudySpec
from dtvg_engine.studies.studyplan import SlotKey
from dtvg_engine.train import tasks

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
