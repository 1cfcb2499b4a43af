"""The live group panel: every source ranked by similarity to the target, the selected ones highlighted."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from dtvg_tui.series import GroupState


class GroupPanel(Static):
    """Ranking, selection, TS, KC and mean scales of one step's group."""

    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id)
        self.border_title = "Group"

    def show(self, state: GroupState | None, target: str = "") -> None:
        if state is None:
            self.border_title = "Group"
            self.update(Text("No group events (yet).", style="dim"))
            return
        self.border_title = f"Group at step {state.step}" + (f" → {target}" if target else "")
        table = Table(box=None, expand=True, padding=(0, 1), show_edge=False)
        table.add_column("#", justify="right", style="dim", width=3)
        table.add_column("source")
        table.add_column("sim", justify="right")
        table.add_column("in", justify="center", width=2)
        table.add_column("scale", justify="right")
        selected = set(state.selected)
        for rank, (task, sim) in enumerate(state.ranked, 1):
            chosen = task in selected
            style = "bold green" if chosen else ("dim" if sim < 0 else "")
            scale = state.scales.get(task)
            table.add_row(
                str(rank),
                Text(task, style=style),
                Text(f"{sim:+.4f}", style=style),
                Text("✔" if chosen else "·", style=style),
                Text(f"{scale:.3f}" if scale is not None else "", style=style),
            )
        caption = Text.assemble(
            ("TS ", "bold"),
            f"{state.ts:+.4f}   ",
            ("KC ", "bold"),
            f"{state.kc:+.4f}   ",
            (f"{len(selected)}/{len(state.ranked)} selected", "green"),
        )
        table.caption = caption
        self.update(table)
