"""The study view's data: a study's progress and tables, from the run folders, cached between refreshes.

Plain Python (no Textual), run in a worker thread by the study screen. The dashboard already keeps every
run's summary fresh (the Runs screen's scans); what the view adds is read once per run and kept: its
config (read again when config.json changes: the worker adds its split as it starts), its test score and
its source groups once it completed, and the similarity of the stage-1 vectors once per set of files.
Everything is computed by `dtvg_engine.studies.study`, as `dtvg runs report` computes it.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dtvg_engine.errors import UserError
from dtvg_engine.method import bank
from dtvg_engine.runs.runfolder import CONFIG, read_config
from dtvg_engine.runs.runstatus import RunSummary
from dtvg_engine.studies import study, studyprogress, studyresults
from dtvg_engine.studies.studyfile import StudySpec
from dtvg_engine.studies.studyplan import banked_sources


@dataclass(frozen=True)
class GroupRow:
    """How often each source was in a grouped method's group on one target, over the finished seeds."""

    target: str
    method: str
    seeds: int
    shares: list[float]
    """Per source (in study order): the share of the steps it was in the group, mean over seeds."""
    changes: float
    """How many times the group changed, mean over seeds."""


@dataclass
class Snapshot:
    """Everything the study view shows, at one moment."""

    spec: StudySpec
    runs: study.Runs
    slots: list[studyprogress.Filled]
    counts: dict[str, int]
    seconds_left: float | None
    results: studyresults.Results
    stage1: list[tuple[studyprogress.Filled, studyresults.Stage1Row | None]]
    """Each planned stage-1 run and, once it has a run folder, its row."""
    banked: list[studyresults.Stage1Row]
    """The sources taken from the source bank (no run of this runs directory)."""
    tests: dict[str, float | None]
    """Run id → test score of every finished run read so far."""
    groups: list[GroupRow] = field(default_factory=list)
    similarity: tuple[list[str], list[list[float]]] | None = None
    similarity_error: str | None = None
    """Why there is no similarity matrix (yet)."""

    def slot_runs(self, target: str, method: str) -> list[studyprogress.Filled]:
        """The stage-2 slots of one table cell, one per seed."""
        return [s for s in self.slots if s.stage == "stage2" and s.task == target and s.method == method]

    def run_dir(self, slot: studyprogress.Filled) -> Path | None:
        return self.runs.runs_dir / slot.run_id if slot.run_id else None


class StudyData:
    """One study's data, re-read incrementally every refresh (one thread at a time)."""

    def __init__(self, spec: StudySpec, runs_dir: Path) -> None:
        self.spec = spec
        """The study (a pipeline file, checked)."""
        self.runs_dir = Path(runs_dir)
        self._configs: dict[str, tuple[int, dict[str, Any]]] = {}
        self._tests: dict[str, float | None] = {}
        self._groups: dict[str, list[tuple[int, tuple[str, ...]]]] = {}
        self._similarity: tuple[tuple, Any] | None = None
        self.banked: dict[str, bank.BankVector] | None = None
        """The study's sources taken from the source bank, by task (read on the first load; a damaged
        bank is that load's error)."""

    def _config(self, run_id: str) -> dict[str, Any] | None:
        try:  # os.path, not pathlib: this runs for every run of the runs directory, every refresh
            mtime = os.stat(os.path.join(self.runs_dir, run_id, CONFIG)).st_mtime_ns
        except OSError:
            return None
        cached = self._configs.get(run_id)
        if cached is None or cached[0] != mtime:
            try:
                cached = self._configs[run_id] = (mtime, read_config(self.runs_dir / run_id))
            except UserError:
                return None
        return cached[1]

    def _test(self, run_dir: Path, runs: study.Runs) -> float | None:
        """A run's test score, read once it completed (and then kept)."""
        run_id = run_dir.name
        if run_id not in self._tests:
            if runs.status(run_id) != "completed":
                return None
            self._tests[run_id] = studyresults.test_score(run_dir)
        return self._tests[run_id]

    def load(self, summaries: dict[str, RunSummary]) -> Snapshot:
        """The study now: which runs fill it, how far it got, its results and stage-1 tables."""
        if self.banked is None:
            self.banked = banked_sources(self.spec)
        configs = {}
        for run_id in sorted(summaries):
            config = self._config(run_id)
            if config is not None:
                configs[run_id] = config
        runs = study.Runs(self.runs_dir, configs, summaries.get)
        slots = studyprogress.fill(self.spec, runs)
        found = study.find_study(self.spec, runs)
        results = studyresults.results(
            found,
            runs,
            lambda run_dir: self._test(run_dir, runs),
            lambda run_dir: studyresults.recorded_constant(configs.get(run_dir.name, {})),
        )
        stage1 = []
        for slot in (s for s in slots if s.stage == "stage1"):
            role = "source" if slot.seed is None else f"target, seed {slot.seed}"
            row = None
            if slot.run_id:
                run_dir = self.runs_dir / slot.run_id
                row = studyresults.stage1_row(slot.task, role, run_dir, runs, self._test(run_dir, runs))
            stage1.append((slot, row))
        return Snapshot(
            self.spec,
            runs,
            slots,
            studyprogress.counts(slots),
            studyprogress.seconds_left(self.spec, slots, runs),
            results,
            stage1,
            [studyresults.bank_row(vector) for vector in self.banked.values()],
            dict(self._tests),
        )

    def load_details(self, snapshot: Snapshot) -> None:
        """Add what takes longer to read: the source groups and the stage-1 similarity matrix."""
        snapshot.groups = self._group_rows(snapshot)
        sources = {s.task: self.runs_dir / s.run_id for s in snapshot.slots if _done_stage1(s, None)}
        targets = {
            (s.task, s.seed): self.runs_dir / s.run_id
            for s in snapshot.slots
            if s.seed is not None and _done_stage1(s, s.seed)
        }
        key = (tuple(sorted(sources.items())), tuple(sorted(targets.items())))
        if self._similarity is None or self._similarity[0] != key:
            from dtvg_engine.method.tpv_plain import similarity_matrix

            try:
                files = studyresults.vector_files(self.spec, sources, targets, self.banked)
                found = (
                    similarity_matrix(files) if files else "No stage-1 run of this study has finished yet."
                )
                self._similarity = (key, found)
            except UserError as e:
                self._similarity = (key, str(e))
        value = self._similarity[1]
        if isinstance(value, str):
            snapshot.similarity_error = value
        else:
            snapshot.similarity = value

    def _group_rows(self, snapshot: Snapshot) -> list[GroupRow]:
        sources = self.spec.sources
        rows = []
        for target in self.spec.targets:
            for method in self.spec.methods:
                per_seed = []
                for slot in snapshot.slot_runs(target, method):
                    if slot.state != "done" or not slot.run_id:
                        continue
                    if slot.run_id not in self._groups:
                        self._groups[slot.run_id] = studyresults.group_steps(self.runs_dir / slot.run_id)
                    if self._groups[slot.run_id]:
                        per_seed.append(self._groups[slot.run_id])
                if not any(group for steps in per_seed for _, group in steps):
                    continue  # a method that groups nothing (no sources, or no group events)
                shares = [studyresults.source_shares(steps, sources) for steps in per_seed]
                rows.append(
                    GroupRow(
                        target,
                        method,
                        len(per_seed),
                        [statistics.fmean(column) for column in zip(*shares, strict=True)],
                        statistics.fmean(len(studyresults.trajectory(steps)) - 1 for steps in per_seed),
                    )
                )
        return rows


def _done_stage1(slot: studyprogress.Filled, seed: int | None) -> bool:
    return slot.stage == "stage1" and slot.seed == seed and slot.state == "done" and slot.run_id is not None
