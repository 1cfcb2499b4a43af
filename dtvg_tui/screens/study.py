"""The study view: a whole pipeline (targets × methods × seeds) filling its results table live.

`StudyScreen` shows the study's progress (runs done / running / queued / stopped / failed of the total,
and the time left from the measured run times), its target × method table (mean ± std over the seeds
finished, the seeds per cell, the best per target marked, the constant-prediction floor), a bar chart of
the highlighted target, the stage-1 runs, the similarity heatmap of the stage-1 vectors and how often each
source was in a grouped method's group. Enter on a cell lists its runs (`StudyCellScreen`), from where
the run detail, inspector and compare screens open as from the Runs screen. `StudiesScreen` (S on the
Runs screen) lists the studies there are. The tables come from `dtvg_engine.studies.study`, as
`dtvg runs report` writes them, and the export writes exactly the report's table.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static, TabbedContent, TabPane

from dtvg_engine.errors import UserError
from dtvg_engine.runs.atomic import write_json_atomic, write_text_atomic
from dtvg_engine.studies import studyprocess, studyprogress, studyresults
from dtvg_engine.studies.studyfile import StudySpec
from dtvg_tui import keys
from dtvg_tui.fmt import STATUS_STYLES, fmt_duration
from dtvg_tui.screens.dialogs import ConfirmScreen
from dtvg_tui.studydata import Snapshot, StudyData
from dtvg_tui.widgets.heatmap import Heatmap
from dtvg_tui.widgets.score_bars import ScoreBars

STATE_STYLES = {
    "done": "green",
    "running": "bold cyan",
    "queued": "dim",
    "stopped": "magenta",
    "failed": "red",
}
"""Style of each progress state."""

BAR_WIDTH = 30


def progress_text(snapshot: Snapshot, pipeline: str | None) -> Text:
    """The study's progress: a bar, the count in each state and the time left; then its pipeline."""
    counts, total = snapshot.counts, len(snapshot.slots)
    done = round(BAR_WIDTH * counts["done"] / total) if total else 0
    text = Text()
    text.append("█" * done, style="green")
    text.append("░" * (BAR_WIDTH - done), style="dim")
    text.append(f" {counts['done']}/{total} done", style="bold")
    for state in studyprogress.STATES[1:]:
        if counts[state] or state in ("running", "queued", "failed"):
            text.append(" · ")
            text.append(f"{counts[state]} {state}", style=STATE_STYLES[state] if counts[state] else "dim")
    if counts["done"] == total:
        text.append("   complete", style="bold green")
    elif snapshot.seconds_left is not None:
        text.append(f"   about {fmt_duration(snapshot.seconds_left)} of runs left")
    else:
        text.append("   time left: after the first finished run", style="dim")
    if pipeline is not None:
        text.append(f"\npipeline running ({pipeline}) · s: stop the study", style="cyan")
    else:
        text.append("\npipeline not running · g: start or resume the study", style="dim")
    return text


def _shown_path(path: Path) -> str:
    """A path as the user would type it here: relative to the working directory when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _cell(row: dict[str, Any], seeds: int) -> Text:
    """A table cell: mean ± std in percent, the seeds it is over, the best of its target in bold."""
    if row["mean"] is None:
        return Text(f"—  0/{seeds}", style="dim")
    text = Text(
        f"{studyresults.pct(row['mean'])} ± {studyresults.pct(row['std'])}",
        style="bold green" if row.get("best") else "",
    )
    text.append(f"  {row['seeds']}/{seeds}", style="dim" if row["seeds"] == seeds else "yellow")
    if row.get("best"):
        text.append(" ★", style="bold green")
    return text


class StudyScreen(Screen[None]):
    """One study, refreshed from its run folders every `app.refresh_interval` seconds."""

    BINDINGS = keys.STUDY_BINDINGS

    def __init__(self, spec: StudySpec, pipeline_file: Path | None) -> None:
        super().__init__()
        self.spec = spec
        """The study, as the pipeline reads it."""
        self.pipeline_file = pipeline_file
        """The TOML file that runs it (None when only a record of it is left)."""
        self.data: StudyData | None = None
        """The study's data, read from the app's runs directory (made on mount)."""
        self.snapshot: Snapshot | None = None
        """What is shown."""
        self.pipeline: str | None = None
        """Where the study's pipeline runs ("pid N", "Slurm job N") while it does."""
        self._loading = False
        self._after_scan = False
        self._retrying = False
        self.shown_at: float | None = None
        """`time.time()` when the table of a study with every planned run finished was first painted
        (the scale benchmark waits for it)."""
        self.details_shown = False
        """Whether the groups and the similarity heatmap have been drawn once."""
        self._rows: dict[str, list[tuple[str | Text, ...]]] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="study-progress")
        with TabbedContent(id="study-tabs"):
            with TabPane("Results (1)", id="study-results"):
                yield DataTable(id="study-table", cursor_type="cell")
                yield Static(id="study-note")
                yield ScoreBars(id="study-bars")
            with TabPane("Stage 1 (2)", id="study-stage1"):
                yield DataTable(id="study-stage1-table", cursor_type="row", zebra_stripes=True)
            with TabPane("Similarity (3)", id="study-similarity"), VerticalScroll():
                yield Heatmap(id="study-heatmap")
            with TabPane("Groups (4)", id="study-groups"):
                yield Static(id="study-groups-note")
                yield DataTable(id="study-groups-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.data = StudyData(self.spec, self.app.runs_dir)
        where = f" — {_shown_path(self.pipeline_file)}" if self.pipeline_file else ""
        self.sub_title = f"Study {self.spec.name}{where}"
        table = self.query_one("#study-table", DataTable)
        table.add_column("target", key="target")
        for method in self.spec.methods:
            table.add_column(method, key=method)
        table.add_column("constant", key="constant")
        for target in self.spec.targets:
            table.add_row(
                *[Text(target, style="bold"), *(Text("…", style="dim") for _ in self.spec.methods)],
                "",
                key=target,
            )
        table.add_row(Text("average", style="italic"), *("" for _ in self.spec.methods), "", key="average")
        stage1 = self.query_one("#study-stage1-table", DataTable)
        for label in ("task", "role", "state", "data", "run", "steps", "best validation", "test"):
            stage1.add_column(label)
        groups = self.query_one("#study-groups-table", DataTable)
        for label in ("target", "method", "seeds", "changes", *(f"{s} in" for s in self.spec.sources)):
            groups.add_column(label)
        self.query_one("#study-heatmap", Heatmap).show_error("Loading the stage-1 vectors…")
        table.focus()
        self.refresh_study()
        self.set_interval(self.app.refresh_interval, self.refresh_study)

    # ----- data -----

    def refresh_study(self) -> None:
        """Re-read the study in a worker thread, unless a read is under way.

        The runs' summaries are the Runs screen's. Until its first scan of the folders is done (it shows
        the history index meanwhile) the study is read again every 0.2 s, so that the scan's result
        shows at once rather than a refresh interval later.
        """
        runs = self.app.runs_screen
        if not self._loading and self.data is not None:
            self._loading = True
            self._after_scan = runs.scanned
            self._load(self.data, dict(runs.summaries))
        if not self._after_scan and not self._retrying:
            self._retrying = True
            self.set_timer(0.2, self._retry)

    def _retry(self) -> None:
        self._retrying = False
        self.refresh_study()

    @work(thread=True, group="study", exit_on_error=False)
    def _load(self, data: StudyData, summaries: dict) -> None:
        try:
            snapshot = data.load(summaries)
            pipeline = studyprocess.pipeline_running(data.runs_dir, self.spec.name)
            self.app.call_from_thread(self._show, snapshot, pipeline)
            data.load_details(snapshot)
            self.app.call_from_thread(self._show_details, snapshot)
        except Exception as e:  # noqa: BLE001 - a bad read must not take the dashboard down
            self.app.call_from_thread(self.notify, f"reading the study failed: {e}", severity="error")
        finally:
            self._loading = False

    def _show(self, snapshot: Snapshot, pipeline: str | None) -> None:
        self.snapshot, self.pipeline = snapshot, pipeline
        self.query_one("#study-progress", Static).update(progress_text(snapshot, pipeline))
        self._show_table(snapshot)
        self._show_stage1(snapshot)
        if self.shown_at is None and snapshot.counts["done"] == len(snapshot.slots):
            self.call_after_refresh(lambda: setattr(self, "shown_at", time.time()))
        self.call_after_refresh(self._show_bars)  # the numbers first: plotext takes a frame of its own

    def _show_table(self, snapshot: Snapshot) -> None:
        table = self.query_one("#study-table", DataTable)
        results = snapshot.results
        seeds = len(self.spec.seeds)
        cells = {(r["target"], r["method"]): r for r in results.rows}
        for target, floor in zip(self.spec.targets, results.floors, strict=True):
            metric = cells[target, self.spec.methods[0]]["metric"]
            label = Text.assemble((target, "bold"), (f" ({metric})", "dim"))
            table.update_cell(target, "target", label, update_width=True)
            for method in self.spec.methods:
                table.update_cell(target, method, _cell(cells[target, method], seeds), update_width=True)
            table.update_cell(target, "constant", studyresults.pct(floor), update_width=True)
        averages = results.averages()
        for key, value in zip([*self.spec.methods, "constant"], averages, strict=True):
            table.update_cell(
                "average", key, Text(studyresults.pct(value), style="italic"), update_width=True
            )
        finished = len(results.study.runs)
        self.query_one("#study-note", Static).update(
            Text(
                f"{finished} finished stage-2 runs. Test score in %, mean ± std over the seeds finished "
                "(n/N seeds); ★ best of the target; constant: the best constant prediction on the same "
                "test rows. enter: the cell's runs · c: compare the row's methods · e: export",
                style="dim",
            )
        )

    def _show_stage1(self, snapshot: Snapshot) -> None:
        def cells(row: studyresults.Stage1Row, state: Text) -> tuple[str | Text, ...]:
            best, test = studyresults.pct(row.best), studyresults.pct(row.test)
            return (row.task, row.role, state, row.data, row.run_id, str(row.steps), best, test)

        rows: list[tuple[str | Text, ...]] = []
        for slot, row in snapshot.stage1:
            state = Text(slot.state, style=STATE_STYLES[slot.state])
            if row is None:
                role = "source" if slot.seed is None else f"target, seed {slot.seed}"
                rows.append((slot.task, role, state, "", "not started", "", "", ""))
            else:
                rows.append(cells(row, state))
        shipped = Text("bank", style="green")  # shipped with the package: nothing to run
        rows += [cells(row, shipped) for row in snapshot.banked]
        self._fill("study-stage1-table", rows)

    def _fill(self, table_id: str, rows: list[tuple[str | Text, ...]]) -> None:
        """Show `rows` in a table, rebuilt only when they changed (a refresh must not move its cursor)."""
        if self._rows.get(table_id) == rows:
            return
        self._rows[table_id] = rows
        table = self.query_one(f"#{table_id}", DataTable)
        cursor = table.cursor_row
        table.clear()
        for row in rows:
            table.add_row(*row)
        if rows:
            table.move_cursor(row=min(max(cursor, 0), len(rows) - 1), animate=False)

    def _show_details(self, snapshot: Snapshot) -> None:
        self.details_shown = True
        heatmap = self.query_one("#study-heatmap", Heatmap)
        if snapshot.similarity is not None:
            heatmap.show(*snapshot.similarity)
        else:
            heatmap.show_error(snapshot.similarity_error or "")
        self.query_one("#study-groups-note", Static).update(
            Text(
                "How often each source was in the group: the share of the steps, mean over the seeds "
                "finished; changes: how many times the group changed in a run."
                if snapshot.groups
                else "No grouped method of this study has finished a run yet.",
                style="dim",
            )
        )
        rows: list[tuple[str | Text, ...]] = []
        for row in snapshot.groups:
            shares = [Text(f"{share:.0%}", style="green" if share >= 0.5 else "") for share in row.shares]
            rows.append((row.target, row.method, str(row.seeds), f"{row.changes:.1f}", *shares))
        self._fill("study-groups-table", rows)

    # ----- the cursor: chart, cell runs, compare -----

    def _cursor(self) -> tuple[str | None, str | None]:
        """(target, method) under the cursor; None for the parts that are not there."""
        table = self.query_one("#study-table", DataTable)
        row, column = table.cursor_coordinate
        targets, columns = self.spec.targets, ["target", *self.spec.methods, "constant"]
        target = targets[row] if row < len(targets) else None
        method = columns[column] if column < len(columns) and columns[column] in self.spec.methods else None
        return target, method

    @on(DataTable.CellHighlighted, "#study-table")
    def _show_bars(self) -> None:
        target, _ = self._cursor()
        if self.snapshot is None or target is None:
            return
        results = self.snapshot.results
        rows = [r for r in results.rows if r["target"] == target]
        floor = results.floors[self.spec.targets.index(target)]
        self.query_one("#study-bars", ScoreBars).show(
            f"{target} ({rows[0]['metric']}): mean ± std over seeds; line: constant prediction",
            self.spec.methods,
            [r["mean"] for r in rows],
            [r["std"] for r in rows],
            floor,
        )

    @on(DataTable.CellSelected, "#study-table")
    def _cell_selected(self) -> None:
        target, method = self._cursor()
        if self.snapshot is None or target is None or method is None:
            self.notify("Put the cursor on a method's cell of a target to see its runs.", severity="warning")
            return
        self.app.push_screen(StudyCellScreen(self, target, method))

    def action_compare_row(self) -> None:
        """Compare the highlighted target's methods: one run per method, of the seed most of them have."""
        target, _ = self._cursor()
        if self.snapshot is None or target is None:
            return
        by_seed: dict[int, list[Path]] = {}
        for method in self.spec.methods:
            for slot in self.snapshot.slot_runs(target, method):
                run_dir = self.snapshot.run_dir(slot)
                if run_dir is not None and slot.state in ("done", "running", "stopped"):
                    by_seed.setdefault(slot.seed, []).append(run_dir)
        if not by_seed or max(len(runs) for runs in by_seed.values()) < 2:
            self.notify(f"{target}: fewer than two methods have runs yet.", severity="warning")
            return
        seed = max(by_seed, key=lambda s: (len(by_seed[s]), -s))
        self.notify(f"Comparing {target}'s methods on seed {seed}.", timeout=3)
        self.app.open_compare(by_seed[seed])

    def action_show_tab(self, tab: str) -> None:
        self.query_one("#study-tabs", TabbedContent).active = tab

    # ----- start, stop, export -----

    def _record(self) -> tuple[StudySpec, Path | None] | None:
        path = studyprocess.record_path(Path(self.app.runs_dir), self.spec.name)
        try:
            return studyprocess.read_record(path) if path.is_file() else None
        except UserError:
            return None

    def action_start(self) -> None:
        """Start the study's pipeline, which reuses finished runs and resumes stopped ones."""
        if self.pipeline_file is None:
            self.notify(
                "This study's pipeline file is gone; open it with dtvg-tui --study FILE to start it.",
                severity="error",
            )
            return
        record = self._record()
        same_file = record and record[1] == self.pipeline_file.resolve()
        data_dir = record[0].shared.get("data_dir") if same_file else None
        try:
            pid, log = studyprocess.start_pipeline(self.pipeline_file, Path(self.app.runs_dir), data_dir)
        except (UserError, OSError) as e:
            self.notify(str(e), severity="error")
            return
        self.pipeline = f"pid {pid}"
        self.notify(f"Started the study (pipeline pid {pid}, log {log}).")

    def action_stop(self) -> None:
        """Stop the study (after confirming): its pipeline ends, its running runs stop gracefully."""
        if self.snapshot is None:
            return
        live = self.snapshot.counts["running"]
        if self.pipeline is None and not live:
            self.notify("Nothing of this study is running.", severity="warning")
            return

        def stop(confirmed: bool | None) -> None:
            if confirmed:
                self._stop()

        question = f"Stop study {self.spec.name}? (its pipeline ends, its {live} running run(s) stop)"
        self.app.push_screen(ConfirmScreen(question, "Stop"), stop)

    @work(thread=True, group="study-stop", exit_on_error=False)
    def _stop(self) -> None:
        try:
            had_pipeline, stopped = studyprocess.stop_study(self.spec, Path(self.app.runs_dir))
        except (UserError, OSError) as e:
            self.app.call_from_thread(self.notify, f"cannot stop the study: {e}", severity="error")
            return
        ended = "ended its pipeline, " if had_pipeline else ""
        message = f"Stopping the study: {ended}asked {stopped} run(s) to stop; g resumes it."
        self.app.call_from_thread(self.notify, message)
        self.app.call_from_thread(self.refresh_study)

    def action_export(self) -> None:
        """Write the table as `dtvg runs report` writes it: `<runs>/<name>-table.md` and `.json`."""
        if self.snapshot is None:
            return
        results = self.snapshot.results
        stem = Path(self.app.runs_dir) / f"{self.spec.name}-table"
        try:
            write_text_atomic(stem.with_suffix(".md"), results.markdown)
            write_json_atomic(stem.with_suffix(".json"), results.document())
        except OSError as e:
            self.notify(f"cannot export: {e}", severity="error")
            return
        self.notify(f"Exported {stem}.md and {stem}.json")

    def action_back(self) -> None:
        self.dismiss()


class StudyCellScreen(Screen[None]):
    """The runs of one table cell (a target and a method), one per seed."""

    BINDINGS = keys.STUDY_CELL_BINDINGS

    def __init__(self, parent: StudyScreen, target: str, method: str) -> None:
        super().__init__()
        self.study_screen = parent
        self.target = target
        self.method = method
        self.run_dirs: list[Path | None] = []
        """The run of each row (None: not started)."""

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="cell-title")
        yield DataTable(id="cell-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"Study {self.study_screen.spec.name}: {self.method} on {self.target}"
        table = self.query_one("#cell-table", DataTable)
        for label in ("seed", "state", "run", "status", "step", "best validation", "test", "duration"):
            table.add_column(label)
        self.render_runs()
        table.focus()
        self.set_interval(self.app.refresh_interval, self.render_runs)

    def render_runs(self) -> None:
        snapshot = self.study_screen.snapshot
        if snapshot is None:
            return
        table = self.query_one("#cell-table", DataTable)
        row_index = table.cursor_row
        table.clear()
        self.run_dirs = []
        slots = snapshot.slot_runs(self.target, self.method)
        for slot in slots:
            run_dir = snapshot.run_dir(slot)
            self.run_dirs.append(run_dir)
            summary = snapshot.runs.summary(slot.run_id) if slot.run_id else None
            state = Text(slot.state, style=STATE_STYLES[slot.state])
            if summary is None:
                table.add_row(str(slot.seed), state, "not started", "", "", "", "", "")
                continue
            test = snapshot.tests.get(summary.run_id)
            table.add_row(
                str(slot.seed),
                state,
                summary.run_id,
                Text(summary.status, style=STATUS_STYLES.get(summary.status, "")),
                f"{summary.step}/{summary.total_steps or '?'}",
                studyresults.pct(summary.best_metric),
                studyresults.pct(test),
                fmt_duration(summary.duration),
            )
        if slots:
            table.move_cursor(row=min(max(0, row_index), len(slots) - 1), animate=False)
        done = sum(slot.state == "done" for slot in slots)
        self.query_one("#cell-title", Static).update(
            Text.assemble(
                (f"{self.method} → {self.target}", "bold"),
                f"   {done} of {len(slots)} seeds finished   enter: detail · i: inspector · c: compare them",
            )
        )

    def _current(self) -> Path | None:
        row = self.query_one("#cell-table", DataTable).cursor_row
        run_dir = self.run_dirs[row] if 0 <= row < len(self.run_dirs) else None
        if run_dir is None:
            self.notify("This seed's run has not started yet.", severity="warning")
        return run_dir

    @on(DataTable.RowSelected, "#cell-table")
    def action_open_detail(self) -> None:
        run_dir = self._current()
        if run_dir is not None:
            self.app.open_detail(run_dir)

    def action_inspect(self) -> None:
        run_dir = self._current()
        if run_dir is not None:
            self.app.open_inspector(run_dir)

    def action_compare(self) -> None:
        run_dirs = [d for d in self.run_dirs if d is not None]
        if len(run_dirs) < 2:
            self.notify("Fewer than two seeds have runs yet.", severity="warning")
            return
        self.app.open_compare(run_dirs)

    def action_back(self) -> None:
        self.dismiss()


class StudiesScreen(Screen[None]):
    """The studies there are: pipeline files under experiments/ and those the runs directory ran."""

    BINDINGS = keys.STUDIES_BINDINGS

    def __init__(self, folders: list[Path]) -> None:
        super().__init__()
        self.folders = folders
        """Where pipeline files are looked for."""
        self.studies: list[studyprocess.StudyFile] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="studies-help")
        yield DataTable(id="studies-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "Studies"
        table = self.query_one("#studies-table", DataTable)
        for label in ("study", "file", "results in the runs directory"):
            table.add_column(label)
        self.studies = studyprocess.find_studies(self.app.runs_dir, self.folders)
        for found in self.studies:
            table.add_row(
                Text(found.name, style="bold"),
                _shown_path(found.path) if found.path else Text("no study file", style="dim"),
                "yes" if found.results else "",
            )
        where = ", ".join(_shown_path(f) for f in self.folders) or "experiments/"
        self.query_one("#studies-help", Static).update(
            Text(
                f"Pipeline files in {where}, and the studies whose pipelines ran in {self.app.runs_dir}. "
                "enter: open · escape: back"
                if self.studies
                else f"No studies: no pipeline file (*.toml) in {where}, and no pipeline ran in "
                f"{self.app.runs_dir}. Write one (see dtvg_engine/studies/pipeline.py) or open it with "
                f"--study FILE.",
                style="dim",
            )
        )
        table.focus()

    @on(DataTable.RowSelected, "#studies-table")
    def _open(self, event: DataTable.RowSelected) -> None:
        found = self.studies[event.cursor_row]
        if found.path is None:
            self.notify(
                f"{found.name}: only its results are here; open its file with dtvg-tui --study FILE.",
                severity="warning",
            )
            return
        self.app.open_study(found.path)

    def action_back(self) -> None:
        self.dismiss()
