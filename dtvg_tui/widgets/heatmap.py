"""A labelled heatmap of a square matrix, in coloured cells with the values printed."""

from __future__ import annotations

from rich.color import Color
from rich.style import Style
from rich.table import Table
from rich.text import Text
from textual.widgets import Static


def cell_style(value: float, low: float, high: float) -> Style:
    """Blue for low, red for high values (white text on both)."""
    span = (high - low) or 1.0
    t = min(1.0, max(0.0, (value - low) / span))
    red, blue = int(40 + 180 * t), int(40 + 180 * (1 - t))
    return Style(bgcolor=Color.from_rgb(red, 40, blue), color="white")


class Heatmap(Static):
    """The task-similarity matrix (Figure 10 of the DTVG paper)."""

    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id)
        self.border_title = "Task similarity of stage-1 vectors (eq. 2)"

    def show(self, names: list[str], matrix: list[list[float]]) -> None:
        if not names:
            self.update(Text("No vectors.", style="dim"))
            return
        values = [v for row in matrix for v in row]
        low, high = min(values), max(values)
        table = Table(box=None, padding=(0, 0), show_edge=False)
        table.add_column("", style="bold", no_wrap=True)
        for name in names:
            table.add_column(name[:8], justify="right", width=9, no_wrap=True)
        for name, row in zip(names, matrix, strict=True):
            table.add_row(name, *(Text(f"{v:+.4g} ", style=cell_style(v, low, high)) for v in row))
        self.update(table)

    def show_error(self, message: str) -> None:
        self.update(Text(message, style="yellow"))
