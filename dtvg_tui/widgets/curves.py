"""A line plot of one or more (step, value) series, downsampled to the plot's width."""

from __future__ import annotations

from collections.abc import Sequence

from textual_plotext import PlotextPlot

from dtvg_tui.series import downsample

PALETTE = ("cyan", "orange", "green", "magenta", "blue", "red", "yellow", "white")
"""Line colours, in order of the series."""


class CurvesPlot(PlotextPlot):
    """Overlaid curves; `show` replaces them all (the plot is rebuilt only when something changed)."""

    def __init__(self, title: str, *, id: str | None = None, classes: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id, classes=classes)
        self.title = title
        """The plot's title."""
        self._key: object = None

    def show(
        self,
        series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
        marker: float | None = None,
        ylabel: str = "",
    ) -> None:
        """Plot `(label, steps, values)` series, with a vertical line at step `marker`."""
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
        if marker is not None and plotted:
            plt.vline(marker, "gray")
        self.refresh()
