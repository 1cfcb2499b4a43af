"""Fold a run's event stream into what the dashboard draws: curves, the group track and its changes.

Pure Python (standard library only), incremental and compact: `RunSeries` is the engine's one fold of a
stream (`events.RunState`: status, steps, best metric, duration, the same the CLI shows) with the
dashboard's columns on top. `feed` takes the events read since the last offset, so a live run is
followed at the cost of its new lines only, and a stage-2 run with 100,000 events is held in flat arrays
(a few bytes per step and source), not in event objects.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_right
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dtvg_engine.runs.events import Artifact, Checkpoint, Eval, Event, Group, Log, RunState, Step

NAN = float("nan")


def downsample(xs: Sequence[float], ys: Sequence[float], max_points: int) -> tuple[list[float], list[float]]:
    """At most `max_points` points: consecutive buckets of the series, each as its mean x and mean y.

    Short series come back unchanged; the last point is always the last bucket's mean, so a live curve
    ends where the run is. NaN values are left out of the means (a bucket of NaNs is dropped).
    """
    n = min(len(xs), len(ys))
    if max_points <= 0 or n == 0:
        return [], []
    if n <= max_points:
        pairs = [(float(xs[i]), float(ys[i])) for i in range(n) if not math.isnan(ys[i])]
        return [p[0] for p in pairs], [p[1] for p in pairs]
    out_x: list[float] = []
    out_y: list[float] = []
    for b in range(max_points):
        lo = b * n // max_points
        hi = (b + 1) * n // max_points
        total_x = total_y = 0.0
        count = 0
        for i in range(lo, hi):
            y = ys[i]
            if not math.isnan(y):
                total_x += xs[i]
                total_y += y
                count += 1
        if count:
            out_x.append(total_x / count)
            out_y.append(total_y / count)
    return out_x, out_y


class Curve:
    """One (step, value) series, kept with increasing steps.

    A resumed run repeats steps from its checkpoint on; a step that is not after the last one drops
    the points at or after it, so the curve shows the run as it finally went.
    """

    __slots__ = ("xs", "ys")

    def __init__(self) -> None:
        self.xs: array[float] = array("d")
        """Steps."""
        self.ys: array[float] = array("d")
        """Values."""

    def __len__(self) -> int:
        return len(self.xs)

    def append(self, x: float, y: float) -> None:
        if self.xs and x <= self.xs[-1]:
            cut = bisect_right(self.xs, x - 1e-9)
            del self.xs[cut:]
            del self.ys[cut:]
        self.xs.append(float(x))
        self.ys.append(float(y))

    @property
    def last(self) -> float | None:
        """The newest value, None when empty."""
        return self.ys[-1] if self.ys else None

    def downsampled(self, max_points: int) -> tuple[list[float], list[float]]:
        return downsample(self.xs, self.ys, max_points)


@dataclass
class GroupState:
    """The group at one step, as a `group` event described it."""

    step: int
    """Training step."""
    ranked: list[tuple[str, float]]
    """Every source with its similarity to the target, descending."""
    selected: list[str]
    """The sources merged at this step, in ranking order."""
    ts: float
    """Target similarity (DTVG eq. 3)."""
    kc: float
    """Knowledge consistency (DTVG eq. 4)."""
    scales: dict[str, float]
    """Mean token scale of each source that had one."""


class GroupTrack:
    """Every `group` event of a stage-2 run, in flat arrays indexed by event (one per step)."""

    def __init__(self) -> None:
        self.sources: list[str] = []
        """Source tasks in order of first appearance."""
        self._index: dict[str, int] = {}
        self.steps: array[int] = array("q")
        """The step of each group event."""
        self.masks: list[int] = []
        """Bit i set when `sources[i]` was selected at that event."""
        self.ts: array[float] = array("d")
        """TS at each event."""
        self.kc: array[float] = array("d")
        """KC at each event."""
        self.sims: list[array[float]] = []
        """Per source, its similarity at each event (NaN when it was not ranked)."""
        self.scales: list[array[float]] = []
        """Per source, its mean scale at each event (NaN when none was given)."""
        self.changes: list[int] = []
        """Indices of the events whose selection differs from the previous event's (the first included)."""
        self.cumulative: list[array[int]] = []
        """Per source, how many of the first k events selected it (length events + 1): O(1) bucket counts."""

    def __len__(self) -> int:
        return len(self.steps)

    def _source(self, name: str) -> int:
        index = self._index.get(name)
        if index is None:
            index = self._index[name] = len(self.sources)
            self.sources.append(name)
            self.sims.append(array("f", [NAN]) * len(self.steps))
            self.scales.append(array("f", [NAN]) * len(self.steps))
            self.cumulative.append(array("l", [0]) * (len(self.steps) + 1))
        return index

    def _truncate(self, keep: int) -> None:
        del self.steps[keep:]
        del self.masks[keep:]
        del self.ts[keep:]
        del self.kc[keep:]
        for column in (*self.sims, *self.scales):
            del column[keep:]
        for column in self.cumulative:
            del column[keep + 1 :]
        while self.changes and self.changes[-1] >= keep:
            self.changes.pop()

    def add(self, event: Group) -> None:
        """Append one `group` event (a repeated or earlier step replaces the tail from that step on)."""
        step = event.step
        if self.steps and step <= self.steps[-1]:
            self._truncate(bisect_right(self.steps, step - 1))
        sims = {self._source(item["task"]): float(item["sim"]) for item in event.ranked}
        mask = 0
        for name in event.selected:
            mask |= 1 << self._source(name)
        scales = {  # the engine also reports the target's own scale: the target is no source
            self._index[name]: float(value) for name, value in event.scales.items() if name in self._index
        }
        self.steps.append(step)
        if not self.masks or self.masks[-1] != mask:
            self.changes.append(len(self.masks))
        self.masks.append(mask)
        self.ts.append(event.ts)
        self.kc.append(event.kc)
        for i in range(len(self.sources)):
            self.sims[i].append(sims.get(i, NAN))
            self.scales[i].append(scales.get(i, NAN))
            self.cumulative[i].append(self.cumulative[i][-1] + (mask >> i & 1))

    def index_at_step(self, step: int) -> int:
        """Index of the last event at or before `step` (0 when before the first)."""
        return max(0, bisect_right(self.steps, step) - 1)

    def selected_at(self, index: int) -> list[str]:
        mask = self.masks[index]
        return [name for i, name in enumerate(self.sources) if mask >> i & 1]

    def state(self, index: int) -> GroupState:
        """The group at event `index` (negative counts from the end)."""
        if index < 0:
            index += len(self.steps)
        ranked = [(name, float(self.sims[i][index])) for i, name in enumerate(self.sources)]
        ranked = [(n, s) for n, s in ranked if not math.isnan(s)]
        ranked.sort(key=lambda item: -item[1])
        mask = self.masks[index]
        selected = [n for n, _ in ranked if mask >> self._index[n] & 1]
        selected += [n for n in self.selected_at(index) if n not in selected]
        scales = {
            name: float(self.scales[i][index])
            for i, name in enumerate(self.sources)
            if not math.isnan(self.scales[i][index])
        }
        return GroupState(
            step=int(self.steps[index]),
            ranked=ranked,
            selected=selected,
            ts=float(self.ts[index]),
            kc=float(self.kc[index]),
            scales=scales,
        )

    def change_steps(self) -> list[int]:
        """The steps at which the selection changed (the first group event counts as a change)."""
        return [int(self.steps[i]) for i in self.changes]

    def membership(self, width: int, start: int = 0, end: int | None = None) -> list[list[float]]:
        """Per source, the fraction of events selecting it in each of ≤ `width` equal buckets of events.

        Covers events `start` to `end` (exclusive, default all): Figure 7 of the paper, downsampled.
        """
        end = len(self.masks) if end is None else min(end, len(self.masks))
        n = end - start
        if n <= 0 or width <= 0:
            return [[] for _ in self.sources]
        buckets = min(width, n)
        rows = []
        for cum in self.cumulative:
            row = []
            for b in range(buckets):
                lo = start + b * n // buckets
                hi = start + (b + 1) * n // buckets
                row.append((cum[hi] - cum[lo]) / (hi - lo))
            rows.append(row)
        return rows


@dataclass
class RunSeries(RunState):
    """Everything the run detail and compare screens show: the engine's fold plus curves and tracks.

    The lifecycle (status, step, best, last evals, duration, segments, error) is `RunState`'s, so the
    detail says what `dtvg runs show` says; the columns below are what only the dashboard draws.
    """

    loss: Curve = field(default_factory=Curve)
    evals: dict[str, Curve] = field(default_factory=dict)
    """Primary metric per eval split."""
    validation_metrics: dict[str, Curve] = field(default_factory=dict)
    """Each metric of the validation evaluations (the detail view plots a generation run's BLEU and ROUGE)."""
    group: GroupTrack = field(default_factory=GroupTrack)
    checkpoints: list[int] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)
    """Latest path of each artifact kind."""
    logs: deque[tuple[float, str, str]] = field(default_factory=lambda: deque(maxlen=200))
    """Recent `log` events (time, level, message)."""
    events: int = 0
    """Events folded so far."""

    def add(self, event: Event) -> None:
        """Fold one event into the run state and the columns."""
        super().add(event)
        self.events += 1
        if isinstance(event, Step):
            self.loss.append(event.step, event.loss)
        elif isinstance(event, Group):
            self.group.add(event)
        elif isinstance(event, Eval):
            if event.primary is not None and event.step is not None:
                self.evals.setdefault(event.split, Curve()).append(event.step, event.primary)
                if event.split == "validation":
                    for name, value in event.metrics.items():
                        if isinstance(value, float):
                            self.validation_metrics.setdefault(name, Curve()).append(event.step, value)
        elif isinstance(event, Checkpoint):
            self.checkpoints.append(event.step)
        elif isinstance(event, Artifact):
            self.artifacts[event.kind] = event.path
        elif isinstance(event, Log):
            self.logs.append((event.time, event.level, event.message))

    @property
    def config(self) -> dict[str, Any]:
        """The config of the latest `run_started`."""
        return self.last_start.config if self.last_start is not None else {}

    @property
    def stage(self) -> str:
        return self.last_start.stage if self.last_start is not None else ""

    @property
    def method(self) -> str:
        return self.last_start.method if self.last_start is not None else ""

    @property
    def task(self) -> str:
        """Stage-1 task or stage-2 target."""
        return self.last_start.label if self.last_start is not None else ""

    @property
    def pid(self) -> int | None:
        return self.last_start.pid if self.last_start is not None else None

    @property
    def samples_per_s(self) -> float | None:
        """Latest training speed."""
        return self.last_step.samples_per_s if self.last_step is not None else None

    @property
    def lr(self) -> dict[str, float]:
        """Latest learning rates."""
        return self.last_step.lr if self.last_step is not None else {}

    @property
    def primary_metric(self) -> str:
        return str(self.config.get("primary_metric") or "primary")
