"""The Runs screen: every run of the runs directory, live, sortable, filterable and selectable."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Select, Static

from dtvg_engine.errors import UserError
from dtvg_engine.runs.runactions import action_refusal
from dtvg_engine.runs.runfolder import tail_log
from dtvg_engine.runs.runmeta import printable, update_meta
from dtvg_engine.runs.runstatus import LIVE_STATUSES, STATUSES, RunSummary
from dtvg_tui import keys, runtable
from dtvg_tui.fmt import STATUS_STYLES, fmt_duration, fmt_metric, fmt_time
from dtvg_tui.screens.dialogs import ConfirmScreen, PromptScreen

MARK = "●"


class RunsScreen(Screen[None]):
    """All runs, refreshed from the run folders every `app.refresh_interval` seconds."""

    BINDINGS = keys.RUNS_BINDINGS

    def __init__(self) -> None:
        super().__init__()
        self.summaries: dict[str, RunSummary] = {}
        """Every known run by id."""
        self.selected: set[str] = set()
        """Ids of the runs selected with space."""
        self.query_text = ""
        """The filter text."""
        self.status_filter: str | None = None
        """Only runs with this status, or all."""
        self.sort_column = "run_id"
        """Key of the sort column."""
        self.sort_reverse = True
        """Descending order (newest first for run ids)."""
        self.shown: list[str] = []
        """Ids in table order."""
        self.matching = 0
        """How many runs pass the filter (the table shows at most `runtable.ROW_LIMIT` of them)."""
        self._cells: dict[str, tuple[str, ...]] = {}
        self._scanning = False
        self._scanned_once = False
        self._scans_applied = 0
        self._stale = False

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="runs-filters"):
            yield Input(placeholder="/ filter: words, status:failed, tag:x, method:dtvg …", id="runs-filter")
            yield Select([(s, s) for s in STATUSES], prompt="any status", id="runs-status", allow_blank=True)
        table: DataTable[str | Text] = DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield table
        yield Static(id="runs-info")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#runs-table", DataTable)
        table.add_column(" ", key="mark", width=1)
        for column in runtable.COLUMNS:
            table.add_column(column.label, key=column.key)
        for summary in self.app.index.cached():
            self.summaries[summary.run_id] = summary
        self.render_table()
        table.focus()
        self.call_after_refresh(self.refresh_runs)  # first paint from the index, then scan the folders
        self.set_interval(self.app.refresh_interval, self.refresh_runs)

    # ----- data -----

    @property
    def scanned(self) -> bool:
        """Whether a scan of the run folders is in the summaries (before, they are the index's)."""
        return self._scans_applied > 0

    def refresh_runs(self) -> None:
        """Start a background scan of the runs directory unless one is running."""
        if not self._scanning:
            self._scanning = True
            self._scan()

    @work(thread=True, group="scan", exit_on_error=False)
    def _scan(self) -> None:
        index = self.app.index
        try:
            if not self._scanned_once and not self.summaries:
                index.history.rebuild()  # missing or corrupt index: rebuild it once, from the folders
            changed, gone = index.scan()
        except Exception as e:  # noqa: BLE001 - a scan failing must not take the dashboard down
            self.app.call_from_thread(self.notify, f"scanning runs failed: {e}", severity="error")
            changed, gone = [], []
        first = not self._scanned_once
        self._scanned_once = True
        self.app.call_from_thread(self._apply, changed, gone, first)

    def _apply(self, changed: list[RunSummary], gone: list[str], first: bool) -> None:
        self._scanning = False
        self._scans_applied += 1
        if first:  # the index may list runs whose folders are gone
            known = {s.run_id for s in self.app.index.all()}
            gone = [*gone, *(run_id for run_id in self.summaries if run_id not in known)]
        for run_id in gone:
            self.summaries.pop(run_id, None)
            self.selected.discard(run_id)
        for summary in changed:
            self.summaries[summary.run_id] = summary
        if changed or gone:
            self.render_table()

    # ----- table -----

    def _row(self, summary: RunSummary) -> list[str | Text]:
        cells: list[str | Text] = [MARK if summary.run_id in self.selected else " "]
        for column, text in zip(runtable.COLUMNS, runtable.row_cells(summary), strict=True):
            if column.key == "status":
                cells.append(Text(text, style=STATUS_STYLES.get(text, "")))
            else:  # as text, not markup; a name or tag from someone else may hold terminal escapes
                cells.append(Text(printable(text)))
        return cells

    def on_screen_resume(self) -> None:
        if self._stale:
            self.render_table()

    def render_table(self) -> None:
        """Show the filtered, sorted runs; rows that did not move are updated in place.

        While another screen covers this one (a study opened with `--study`, a run's detail) the table
        is only marked stale and drawn when the screen shows again: hundreds of rows cost a first paint.
        """
        self._stale = self.app.screen is not self
        if self._stale:
            return
        table = self.query_one("#runs-table", DataTable)
        matching = runtable.view(
            self.summaries.values(), self.query_text, self.status_filter, self.sort_column, self.sort_reverse
        )
        self.matching = len(matching)
        shown = matching[: runtable.ROW_LIMIT]
        ids = [s.run_id for s in shown]
        if ids == self.shown:
            for summary in shown:
                cells = (summary.run_id in self.selected, *runtable.row_cells(summary))
                if self._cells.get(summary.run_id) != cells:
                    self._cells[summary.run_id] = cells
                    row = self._row(summary)
                    for key, value in zip(("mark", *runtable.COLUMN_KEYS), row, strict=True):
                        table.update_cell(summary.run_id, key, value, update_width=True)
        else:
            current = self.current_id
            table.clear()
            self._cells = {}
            for summary in shown:
                self._cells[summary.run_id] = (summary.run_id in self.selected, *runtable.row_cells(summary))
                table.add_row(*self._row(summary), key=summary.run_id)
            self.shown = ids
            if current in ids:
                table.move_cursor(row=ids.index(current), animate=False)
        self._update_title()
        self.update_info()

    def _update_title(self) -> None:
        sort = next(c.label for c in runtable.COLUMNS if c.key == self.sort_column)
        order = "↓" if self.sort_reverse else "↑"
        selected = f", {len(self.selected)} selected" if self.selected else ""
        count = f"{len(self.shown)}/{len(self.summaries)} runs"
        if self.matching > len(self.shown):  # capped: say so, and how to reach the others
            count = f"first {len(self.shown)} of {self.matching} ({len(self.summaries)} runs; / to filter)"
        self.sub_title = f"{count}, sorted by {sort} {order}{selected}"

    @property
    def current_id(self) -> str | None:
        """Id of the highlighted run."""
        table = self.query_one("#runs-table", DataTable)
        if not self.shown or table.cursor_row < 0 or table.cursor_row >= len(self.shown):
            return None
        return self.shown[table.cursor_row]

    @property
    def current(self) -> RunSummary | None:
        run_id = self.current_id
        return self.summaries.get(run_id) if run_id else None

    @on(DataTable.RowHighlighted, "#runs-table")
    def _highlighted(self) -> None:
        self.update_info()

    @on(DataTable.RowSelected, "#runs-table")
    def _row_selected(self) -> None:
        self.action_open_detail()

    @on(DataTable.HeaderSelected, "#runs-table")
    def _header_selected(self, event: DataTable.HeaderSelected) -> None:
        key = str(event.column_key.value)
        if key not in runtable.COLUMN_KEYS:
            return
        if key == self.sort_column:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_column, self.sort_reverse = key, False
        self.render_table()

    def update_info(self) -> None:
        """The panel under the table: the highlighted run's details, and why it failed."""
        info = self.query_one("#runs-info", Static)
        summary = self.current
        if summary is None:
            info.update(
                Text("No runs yet: press n to launch one, or run `dtvg run …` in a terminal.", style="dim")
                if not self.summaries
                else ""
            )
            return
        text = Text()
        text.append(printable(summary.run_id), style="bold")
        text.append(f"  {summary.status}", style=STATUS_STYLES.get(summary.status, ""))
        if summary.best_metric is not None:
            text.append(f"  best {summary.metric_name or 'metric'} {fmt_metric(summary.best_metric)}")
        if summary.started:
            text.append(f"  started {fmt_time(summary.started)}  ran {fmt_duration(summary.duration)}")
        if summary.pid and summary.status in LIVE_STATUSES:
            text.append(f"  pid {summary.pid}")
        if summary.tags:
            text.append(f"\ntags: {printable(', '.join(summary.tags))}", style="cyan")
        if summary.note:
            text.append(f"\nnote: {printable(summary.note)}", style="italic")
        if summary.status in ("failed", "killed"):
            if summary.error:
                text.append(f"\nerror: {printable(summary.error)}", style="red")
            lines = tail_log(summary.run_dir, 6)
            if lines:
                text.append("\nworker.log:\n", style="bold")
                text.append(printable("\n".join(lines)), style="dim")
        info.update(text)

    # ----- filter and sort -----

    @on(Input.Changed, "#runs-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.query_text = event.value
        self.render_table()

    @on(Input.Submitted, "#runs-filter")
    def _filter_submitted(self) -> None:
        self.query_one("#runs-table", DataTable).focus()

    @on(Select.Changed, "#runs-status")
    def _status_changed(self, event: Select.Changed) -> None:
        self.status_filter = event.value if isinstance(event.value, str) else None
        self.render_table()

    def action_focus_filter(self) -> None:
        self.query_one("#runs-filter", Input).focus()

    def action_clear_filter(self) -> None:
        self.query_one("#runs-filter", Input).value = ""
        self.query_one("#runs-status", Select).clear()
        self.query_one("#runs-table", DataTable).focus()

    def action_cycle_status(self) -> None:
        """Next status filter: any → pending → running → … → killed → any."""
        options = [None, *STATUSES]
        nxt = options[(options.index(self.status_filter) + 1) % len(options)]
        select = self.query_one("#runs-status", Select)
        if nxt is None:
            select.clear()
        else:
            select.value = nxt

    def _sort_by(self, offset: int) -> None:
        keys_ = runtable.COLUMN_KEYS
        self.sort_column = keys_[(keys_.index(self.sort_column) + offset) % len(keys_)]
        self.render_table()

    def action_sort_next(self) -> None:
        self._sort_by(1)

    def action_sort_prev(self) -> None:
        self._sort_by(-1)

    def action_sort_reverse(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self.render_table()

    # ----- selection and navigation -----

    def action_toggle_select(self) -> None:
        run_id = self.current_id
        if run_id is None:
            return
        self.selected.symmetric_difference_update({run_id})
        table = self.query_one("#runs-table", DataTable)
        table.update_cell(run_id, "mark", MARK if run_id in self.selected else " ")
        self._cells[run_id] = (run_id in self.selected, *self._cells.get(run_id, ())[1:])
        self._update_title()
        if table.cursor_row < len(self.shown) - 1:
            table.move_cursor(row=table.cursor_row + 1)

    def action_open_detail(self) -> None:
        summary = self.current
        if summary is not None:
            self.app.open_detail(Path(summary.run_dir))

    def action_inspect(self) -> None:
        summary = self.current
        if summary is None:
            return
        if summary.stage != "stage2":
            self.notify(
                "The grouping inspector shows stage-2 runs; this is a stage-1 run.", severity="warning"
            )
            return
        self.app.open_inspector(Path(summary.run_dir))

    def action_compare(self) -> None:
        ids = [run_id for run_id in self.shown if run_id in self.selected]
        ids += sorted(self.selected - set(ids))
        if len(ids) < 2:
            self.notify("Select two or more runs with space, then press c.", severity="warning")
            return
        self.app.open_compare(
            [Path(self.summaries[run_id].run_dir) for run_id in ids if run_id in self.summaries]
        )

    def action_studies(self) -> None:
        self.app.open_studies()

    # ----- annotations -----

    def _targets(self) -> list[RunSummary]:
        if self.selected:
            return [self.summaries[i] for i in self.shown if i in self.selected]
        return [self.current] if self.current else []

    def action_tag(self) -> None:
        targets = self._targets()
        if not targets:
            return
        many = len(targets) > 1
        question = (
            f"Add tags to {len(targets)} runs (comma-separated)" if many else f"Tags of {targets[0].run_id}"
        )
        current = "" if many else ", ".join(targets[0].tags)

        def done(value: str | None) -> None:
            if value is None:
                return
            tags = [t.strip() for t in value.split(",") if t.strip()]
            try:
                for summary in targets:
                    if many:  # added under the run's meta lock: a tag set elsewhere meanwhile stays
                        update_meta(summary.run_dir, add_tags=tags)
                    else:
                        update_meta(summary.run_dir, tags=tags)
            except UserError as e:  # a tag starting with "-", a full disk
                self.notify(printable(str(e)), severity="error")
            self.refresh_runs()

        self.app.push_screen(PromptScreen(question, current, "e.g. baseline, paper"), done)

    def action_note(self) -> None:
        summary = self.current
        if summary is None:
            return

        def done(value: str | None) -> None:
            if value is not None:
                try:
                    update_meta(summary.run_dir, note=value)
                except UserError as e:  # a full disk
                    self.notify(printable(str(e)), severity="error")
                self.refresh_runs()

        self.app.push_screen(PromptScreen(f"Note on {summary.run_id}", summary.note), done)

    # ----- process control -----

    def action_stop(self) -> None:
        control_run(self, self.current, "stop")

    def action_kill(self) -> None:
        control_run(self, self.current, "kill")

    def action_resume(self) -> None:
        control_run(self, self.current, "resume")


def control_run(screen: Screen, summary: RunSummary | None, what: str) -> None:
    """Stop (graceful), kill (whole process group) or resume a run, after confirming stop and kill."""
    if summary is None:
        return
    run_dir = Path(summary.run_dir)
    action = "resume" if what == "resume" else "stop"  # the CLI's rule, from runfolder
    reason = action_refusal(run_dir, action, summary)
    if reason:
        screen.notify(reason, severity="warning")
        return

    def act(confirmed: bool | None = True) -> None:
        if not confirmed:
            return
        try:
            from dtvg_engine.runs import launcher
        except ImportError as e:  # the engine's launcher is missing: say so instead of crashing
            screen.notify(f"cannot {what}: {e}", severity="error")
            return
        try:
            if what == "stop":
                ok = launcher.stop_run(run_dir)
                message = (
                    "Stopping: the worker checkpoints, then finishes as stopped." if ok else "Not running."
                )
            elif what == "kill":
                ok = launcher.kill_run(run_dir)
                message = "Killed the worker's process group." if ok else "Not running."
            else:
                message = f"Resumed {summary.run_id} ({launcher.resume_run(run_dir)})."
        except (UserError, OSError) as e:
            screen.notify(str(e), severity="error")
            return
        screen.notify(message)
        runs = getattr(screen.app, "runs_screen", None)
        if runs is not None:
            runs.refresh_runs()

    if what == "resume":
        act()
    else:
        verb = "Stop" if what == "stop" else "Kill"
        detail = (
            "it checkpoints and finishes as stopped" if what == "stop" else "its whole process group, now"
        )
        screen.app.push_screen(ConfirmScreen(f"{verb} {summary.run_id}? ({detail})", verb), act)
