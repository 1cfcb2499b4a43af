"""A line plot of one or more (step, value) series, downsampled to the plot's width."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from textual_plotext import PlotextPlot

from dtvg_tui.series import downsample

PALETTE = ("cyan", "orange", "green", "magenta", "blue", "red", "yellow", "white")
"""Line colours, in order of the series."""


def step_ticks(xs: Sequence[float], count: int = 5) -> list[int]:
    """Whole-step x ticks: the first and last step, and round steps (1, 2 or 5 × 10^k apart) between."""
    low, high = math.floor(min(xs)), math.ceil(max(xs))
    if high - low < 2:
        return sorted({low, high})
    raw = (high - low) / (count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = max(1, round(next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)))
    inner = range(math.ceil(low / step) * step, high, step)
    return [low, *(t for t in inner if t - low >= step / 3 and high - t >= step / 3), high]


class CurvesPlot(PlotextPlot):
    """Overlaid curves; `show` replaces them all (the plot is rebuilt only when something changed)."""

    def __init__(self, title: str, *, id: str | None = None, classes: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id, classes=classes)
        self.title = title
        """The plot's title."""
        self._key: object = None
        self._drawn_at = 0.0
        self._pending: tuple | None = None
        self._had_data = False

    MIN_INTERVAL = 1.0
    """Seconds between two rebuilds of a live plot (plotext is slow; later calls within it are deferred)."""

    def show(
        self,
        series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
        marker: float | None = None,
        ylabel: str = "",
    ) -> None:
        """Plot `(label, steps, values)` series, with a vertical line at step `marker`."""
        now = time.monotonic()
        wait = self._drawn_at + self.MIN_INTERVAL - now
        if wait > 0 and self._had_data:
            if self._pending is None:
                self.set_timer(wait, self._draw_pending)
            self._pending = (series, marker, ylabel)
            return
        self._pending = None
        self._drawn_at = now
        width = max(self.size.width, 40)
        points = []
        for label, xs, ys in series:
            dx, dy = downsample(xs, ys, max(2 * width, 10))
            points.append((label, dx, dy))
        key = (
            tuple(
                (label, len(xs), xs[-1] if xs else None, ys[-1] if ys else None) for label, xs, ys in points
            ),
            marker,
            width,
            self.size.height,
        )
        if key == self._key:
            return
        self._key = key
        self._had_data = any(xs for _, xs, _ in points)
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(self.title)
        if ylabel:
            plt.ylabel(ylabel)
        plotted = False
        for i, (label, xs, ys) in enumerate(points):
            if xs:
                plt.plot(
                    xs,
                    ys,
                    label=label if len(points) > 1 else None,
                    color=PALETTE[i % len(PALETTE)],
                    marker="braille",
                )
                plotted = True
        if plotted:
            plt.xticks(step_ticks([x for _, xs, _ in points for x in (xs[0], xs[-1]) if xs]))
        if marker is not None and plotted:
            plt.vline(marker, "gray")
        self.refresh()

    def _draw_pending(self) -> None:
        if self._pending is not None:
            series, marker, ylabel = self._pending
            self._pending = None
            self._drawn_at = 0.0
            self.show(series, marker, ylabel)
