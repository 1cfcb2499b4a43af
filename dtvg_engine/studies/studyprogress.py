"""How far a study got: every planned run done, running, queued, stopped or failed, and the time left
from the measured run times (the progress line of `dtvg runs report`, `dtvg run pipeline` and the
dashboard's study view).

Standard library only, like `study`, whose slot join it counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dtvg_engine import config as configs
from dtvg_engine.runs import workers
from dtvg_engine.runs.runstatus import RunSummary
from dtvg_engine.studies import studyplan as plans
from dtvg_engine.studies.study import Runs, join
from dtvg_engine.studies.studyfile import StudySpec

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
