"""A study (a pipeline file's targets × methods × seeds) as its run folders show it: which run fills
each slot of the study's plan (`studyplan.plan`; a run records the slot it was made for, an older run
is matched by its settings, `legacy_slot_of`), and the finished runs that make up its results.

How far a study got is in `studyprogress`, what it found (its results table, its stage-1 runs, its
source groups) in `studyresults`. Standard library only: `dtvg runs report` (and `dtvg run pipeline`)
and the dashboard's study view read studies here, so what the dashboard shows and exports is what the
report writes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from dtvg_engine.errors import UserError
from dtvg_engine.method import bank, method_registry
from dtvg_engine.runs.runfolder import list_run_dirs, missing_stage1_runs, read_config
from dtvg_engine.runs.runstatus import RunSummary, summarize
from dtvg_engine.studies import studyplan as plans
from dtvg_engine.studies.studyfile import StudySpec
from dtvg_engine.studies.studyplan import SlotKey

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
