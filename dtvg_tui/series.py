"""Fold a run's event stream into what the dashboard draws: curves, the group track and its changes.

Pure Python (standard library only), incremental and compact: `RunSeries.feed` takes the events read
since the last offset, so a live run is followed at the cost of its new lines only, and a stage-2 run
with 100,000 events is held in flat arrays (a few bytes per step and source), not in event dicts.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

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

    def add(self, event: dict[str, Any]) -> None:
        """Append one `group` event (a repeated or earlier step replaces the tail from that step on)."""
        step = int(event.get("step", len(self.steps)))
        if self.steps and step <= self.steps[-1]:
            self._truncate(bisect_right(self.steps, step - 1))
        ranked = event.get("ranked") or []
        sims: dict[int, float] = {}
        for item in ranked:
            if isinstance(item, dict) and "task" in item:
                sims[self._source(str(item["task"]))] = _float(item.get("sim"))
        mask = 0
        for name in event.get("selected") or []:
            mask |= 1 << self._source(str(name))
        raw_scales = event.get("scales") or {}
        scales = (  # the engine also reports the target's own scale: the target is no source
            {self._index[str(k)]: _float(v) for k, v in raw_scales.items() if str(k) in self._index}
            if isinstance(raw_scales, dict)
            else {}
        )
        self.steps.append(step)
        if not self.masks or self.masks[-1] != mask:
            self.changes.append(len(self.masks))
        self.masks.append(mask)
        self.ts.append(_float(event.get("ts")))
        self.kc.append(_float(event.get("kc")))
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
class EvalPoint:
    """One `eval` event."""

    step: int
    split: str
    metrics: dict[str, float]
    primary: float | None
    best: bool


@dataclass
class RunSeries:
    """Everything the run detail and compare screens show, folded from the events incrementally."""

    run_id: str = ""
    stage: str = ""
    method: str = ""
    task: str = ""
    """Stage-1 task or stage-2 target."""
    config: dict[str, Any] = field(default_factory=dict)
    """The config of the latest `run_started`."""
    pid: int | None = None
    status: str = "pending"
    """From the lifecycle events only: pending, running, completed, failed or stopped."""
    error: str | None = None
    step: int = 0
    """Latest training step."""
    samples_per_s: float | None = None
    """Latest training speed."""
    lr: dict[str, float] = field(default_factory=dict)
    """Latest learning rates."""
    loss: Curve = field(default_factory=Curve)
    evals: dict[str, Curve] = field(default_factory=dict)
    """Primary metric per eval split."""
    last_eval: dict[str, EvalPoint] = field(default_factory=dict)
    """Latest eval per split."""
    best: EvalPoint | None = None
    """The latest eval marked best."""
    group: GroupTrack = field(default_factory=GroupTrack)
    checkpoints: list[int] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)
    """Latest path of each artifact kind."""
    logs: deque[tuple[float, str, str]] = field(default_factory=lambda: deque(maxlen=200))
    """Recent `log` events (time, level, message)."""
    first_time: float | None = None
    last_time: float | None = None
    segments: int = 0
    """How many times the run started (1 + resumes)."""
    events: int = 0
    """Events folded so far."""
    _closed: float = 0.0
    _open: float | None = None

    def feed(self, events: Iterable[dict[str, Any]]) -> None:
        """Fold more events (in file order)."""
        for event in events:
            kind = event.get("type")
            when = event.get("time")
            self.events += 1
            if kind == "step":
                step = int(event.get("step", self.step))
                self.step = step
                loss = event.get("loss")
                if isinstance(loss, (int, float)):
                    self.loss.append(step, loss)
                speed = event.get("samples_per_s")
                if isinstance(speed, (int, float)):
                    self.samples_per_s = float(speed)
                lr = event.get("lr")
                if isinstance(lr, dict):
                    self.lr = lr
            elif kind == "group":
                self.group.add(event)
            elif kind == "eval":
                point = EvalPoint(
                    step=int(event.get("step", self.step)),
                    split=str(event.get("split", "validation")),
                    metrics=dict(event.get("metrics") or {}),
                    primary=_float_or_none(event.get("primary")),
                    best=bool(event.get("best")),
                )
                self.last_eval[point.split] = point
                if point.primary is not None:
                    self.evals.setdefault(point.split, Curve()).append(point.step, point.primary)
                if point.best:
                    self.best = point
            elif kind == "run_started":
                self.segments += 1
                self.run_id = str(event.get("run_id") or self.run_id)
                self.stage = str(event.get("stage") or self.stage)
                self.method = str(event.get("method") or self.method)
                self.task = str(event.get("target") or event.get("task") or self.task)
                self.config = event.get("config") or self.config
                self.pid = event.get("pid")
                self.status = "running"
                self.error = None
                if self._open is not None and self.last_time is not None:
                    self._closed += self.last_time - self._open
                self._open = when
            elif kind == "run_finished":
                self.status = str(event.get("status") or "failed")
                self.error = event.get("error")
                if self._open is not None and isinstance(when, (int, float)):
                    self._closed += when - self._open
                self._open = None
            elif kind == "checkpoint":
                self.checkpoints.append(int(event.get("step", self.step)))
            elif kind == "artifact":
                self.artifacts[str(event.get("kind"))] = str(event.get("path"))
            elif kind == "log":
                self.logs.append(
                    (when or 0.0, str(event.get("level", "info")), str(event.get("message", "")))
                )
            if isinstance(when, (int, float)):
                if self.first_time is None:
                    self.first_time = when
                self.last_time = when

    @property
    def duration(self) -> float | None:
        """Seconds running, summed over segments; an open segment counts up to the last event."""
        if self.segments == 0:
            return None
        total = self._closed
        if self._open is not None and self.last_time is not None:
            total += self.last_time - self._open
        return total

    @property
    def total_steps(self) -> int | None:
        steps = self.config.get("steps")
        return int(steps) if isinstance(steps, (int, float)) else None

    @property
    def primary_metric(self) -> str:
        return str(self.config.get("primary_metric") or "primary")


def _float(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else NAN


def _float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None
