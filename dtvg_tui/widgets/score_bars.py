"""One target's row of the study table as bars: each method's mean test score, ± std as error bars, and
the constant-prediction floor as a line (people read a comparison faster as a picture than as numbers)."""

from __future__ import annotations

from textual.app import RenderResult
from textual_plotext import PlotextPlot


class ScoreBars(PlotextPlot):
    """Bars of mean ± std per method, for one target; `show` replaces them (redrawn only on change)."""

    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id)
        self._key: object = None

    def render(self) -> RenderResult:
        if self._key is None:  # nothing to plot yet: building plotext's empty frame costs a first paint
            return ""
        return super().render()

    def show(
        self,
        title: str,
        methods: list[str],
        means: list[float | None],
        stds: list[float | None],
        floor: float | None,
    ) -> None:
        """Scores are fractions (plotted in percent); a method without finished seeds has no bar."""
        key = (title, tuple(methods), tuple(means), tuple(stds), floor, self.size)
        if key == self._key:
            return
        self._key = key
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(title)
        bars = [
            (x, 100 * mean, 100 * (std or 0.0))
            for x, mean, std in zip(range(1, len(methods) + 1), means, stds, strict=True)
            if mean is not None
        ]
        if bars:
            xs, ys, errors = ([bar[i] for bar in bars] for i in range(3))
            plt.bar(xs, ys, width=0.5, color="cyan")
            plt.error(xs, ys, yerr=errors, color="red")
            edges = [y - e for y, e in zip(ys, errors, strict=True)] + [
                y + e for y, e in zip(ys, errors, strict=True)
            ]
            edges += [100 * floor] if floor is not None else []
            margin = max(1.0, (max(edges) - min(edges)) * 0.15)
            plt.ylim(max(0.0, min(edges) - margin), min(100.0, max(edges) + margin))
        if floor is not None:
            plt.hline(100 * floor, "gray")
        plt.xticks(list(range(1, len(methods) + 1)), methods)
        plt.xlim(0.4, len(methods) + 0.6)
        self.refresh()
