"""Grouping inspector: the group, ranking and scores at any step, the steps where the group changed,
and the task-similarity heatmap of the stage-1 vectors (computed with numpy, never torch)."""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.events import Click
from textual.widget import Widget
from textual.widgets import Footer, Header, OptionList, Static
from textual.widgets.option_list import Option

from dtvg_engine.errors import UserError
from dtvg_tui import keys
from dtvg_tui.screens.detail import RunFollowingScreen
from dtvg_tui.widgets.group_panel import GroupPanel
from dtvg_tui.widgets.heatmap import Heatmap


class StepSlider(Widget):
    """A one-line slider over the group events: ━━━●──── ; click to jump."""

    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id)
        self.index = 0
        self.count = 0

    def show(self, index: int, count: int) -> None:
        self.index, self.count = index, count
        self.refresh()

    def render(self) -> Text:
        width = max(1, self.content_size.width)
        if self.count <= 1:
            return Text("━" * width, style="dim")
        pos = round(self.index * (width - 1) / (self.count - 1))
        return Text.assemble(("━" * pos, "cyan"), ("●", "bold yellow"), ("─" * (width - pos - 1), "dim"))

    def on_click(self, event: Click) -> None:
        width = max(1, self.content_size.width)
        if self.count > 1:
            index = round(event.x * (self.count - 1) / max(1, width - 1))
            screen = self.screen
            if isinstance(screen, InspectorScreen):
                screen.jump_to(index)


class InspectorScreen(RunFollowingScreen):
    """Move through a stage-2 run's steps and see its group at each."""

    BINDINGS = keys.INSPECTOR_BINDINGS

    def __init__(self, run_dir) -> None:  # noqa: ANN001
        super().__init__(run_dir)
        self._changes_shown = 0
        self._heatmap_loaded = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="inspector-top")
        yield StepSlider(id="inspector-slider")
        with Horizontal(id="inspector-body"):
            yield OptionList(id="inspector-changes")
            with VerticalScroll(id="inspector-main"):
                yield GroupPanel(id="inspector-group")
                yield Heatmap(id="inspector-heatmap")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"Grouping inspector — {self.run_dir.name}"
        self.query_one("#inspector-changes", OptionList).border_title = "Group changes"
        self.update_view()
        self._load_heatmap()

    @work(thread=True, group="heatmap", exit_on_error=False)
    def _load_heatmap(self) -> None:
        from dtvg_tui.similarity import load_matrix

        try:
            names, matrix = load_matrix(self.config, self.run_dir.parent)
        except (UserError, OSError, ValueError) as e:
            self.app.call_from_thread(self.query_one("#inspector-heatmap", Heatmap).show_error, str(e))
            return
        self.app.call_from_thread(self.query_one("#inspector-heatmap", Heatmap).show, names, matrix)

    def update_view(self) -> None:
        series = self.series
        with self.lock:
            track = series.group
            n = len(track)
            index = self.current_index()
            state = track.state(index) if n else None
            change_rows = []
            for k in range(self._changes_shown, len(track.changes)):
                i = track.changes[k]
                change_rows.append((i, int(track.steps[i]), *self._diff(i)))
            change_pos = sum(1 for i in track.changes if i <= index)
            total_changes = len(track.changes)
        top = Text()
        if state is None:
            top.append(
                "No group events: this run has not grouped yet (or its method does not group).", style="dim"
            )
        else:
            top.append(f"step {state.step}", style="bold")
            top.append(f"  (event {index + 1}/{n})   ")
            top.append(f"group {{{', '.join(state.selected)}}}", style="green")
            top.append(f"   TS {state.ts:+.4f}  KC {state.kc:+.4f}   change {change_pos}/{total_changes}")
            top.append(
                "   FOLLOW" if self.follow else "   (f: follow)", style="cyan" if self.follow else "dim"
            )
        self.query_one("#inspector-top", Static).update(top)
        self.query_one("#inspector-slider", StepSlider).show(index, n)
        self.query_one("#inspector-group", GroupPanel).show(state, series.task)
        changes = self.query_one("#inspector-changes", OptionList)
        if change_rows:
            options = []
            for i, step, added, removed in change_rows:
                label = Text(f"{step:>6} ", style="bold")
                label.append(" ".join(f"+{a}" for a in added), style="green")
                if removed:
                    label.append(" " + " ".join(f"-{r}" for r in removed), style="red")
                options.append(Option(label, id=str(i)))
            changes.add_options(options)
            self._changes_shown += len(change_rows)

    def _diff(self, i: int) -> tuple[list[str], list[str]]:
        track = self.series.group
        now = set(track.selected_at(i))
        before = set(track.selected_at(i - 1)) if i > 0 else set()
        return sorted(now - before), sorted(before - now)

    def jump_to(self, index: int) -> None:
        n = len(self.series.group)
        if n:
            self.cursor = min(max(0, index), n - 1)
            self.follow = False
            self.update_view()

    @on(OptionList.OptionSelected, "#inspector-changes")
    def _change_chosen(self, event: OptionList.OptionSelected) -> None:
        if event.option.id is not None:
            self.jump_to(int(event.option.id))

    def action_first(self) -> None:
        self.jump_to(0)

    def action_last(self) -> None:
        self.jump_to(len(self.series.group) - 1)

    def action_change(self, direction: int) -> None:
        """Jump to the previous (-1) or next (+1) step where the group changed."""
        index = self.current_index()
        changes = self.series.group.changes
        if direction > 0:
            target = next((i for i in changes if i > index), None)
        else:
            target = next((i for i in reversed(changes) if i < index), None)
        if target is None:
            self.notify("No earlier group change." if direction < 0 else "No later group change.", timeout=2)
            return
        self.jump_to(target)

    def action_toggle_heatmap(self) -> None:
        heatmap = self.query_one("#inspector-heatmap", Heatmap)
        heatmap.display = not heatmap.display
