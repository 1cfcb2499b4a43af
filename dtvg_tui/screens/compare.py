"""Compare two or more runs: overlaid curves, a metrics table and a config diff ("only what differs": d)."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header

from dtvg_engine.errors import UserError
from dtvg_engine.runs.events import iter_events
from dtvg_engine.runs.runfolder import EVENTS, read_config
from dtvg_engine.runs.runstatus import summarize
from dtvg_tui import keys
from dtvg_tui.configdiff import config_diff
from dtvg_tui.fmt import STATUS_STYLES, fmt_duration, fmt_metric, fmt_number
from dtvg_tui.series import RunSeries
from dtvg_tui.widgets.curves import CurvesPlot


class CompareScreen(Screen[None]):
    """Runs side by side."""

    BINDINGS = keys.COMPARE_BINDINGS

    def __init__(self, run_dirs: list[Path]) -> None:
        super().__init__()
        self.run_dirs = [Path(d) for d in run_dirs]
        """The runs compared, in column order."""
        self.only_differences = True
        """Show only the settings that differ."""
        self.configs = []
        for run_dir in self.run_dirs:
            try:
                self.configs.append(read_config(run_dir))
            except UserError:
                self.configs.append({})
        self.series: list[RunSeries] = []
        """Each run's events, once loaded."""

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="compare-plots"):
            yield CurvesPlot("training loss", id="compare-loss", classes="plot")
            yield CurvesPlot("validation (primary)", id="compare-eval", classes="plot")
        yield DataTable(id="compare-metrics", cursor_type="row")
        yield DataTable(id="compare-config", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"Compare {len(self.run_dirs)} runs"
        metrics = self.query_one("#compare-metrics", DataTable)
        for label in ("Run", "Stage", "Method", "Task", "Status", "Best", "Final loss", "Steps", "Duration"):
            metrics.add_column(label)
        self.render_config()
        self._load()

    @work(thread=True, group="compare", exit_on_error=False)
    def _load(self) -> None:
        loaded = []
        for run_dir in self.run_dirs:
            series = RunSeries()
            series.feed(iter_events(run_dir / EVENTS))
            loaded.append(series)
        self.app.call_from_thread(self._loaded, loaded)

    def _loaded(self, loaded: list[RunSeries]) -> None:
        self.series = loaded
        names = [self._short(d) for d in self.run_dirs]
        self.query_one("#compare-loss", CurvesPlot).show(
            [(n, list(s.loss.xs), list(s.loss.ys)) for n, s in zip(names, loaded, strict=True)]
        )
        evals = []
        for name, s in zip(names, loaded, strict=True):
            curve = s.evals.get("validation") or next(iter(s.evals.values()), None)
            if curve is not None:
                evals.append((name, list(curve.xs), list(curve.ys)))
        self.query_one("#compare-eval", CurvesPlot).show(evals)
        metrics = self.query_one("#compare-metrics", DataTable)
        metrics.clear()
        for run_dir, s in zip(self.run_dirs, loaded, strict=True):
            try:
                status = summarize(run_dir).status
            except UserError:
                status = s.status
            metrics.add_row(
                run_dir.name,
                s.stage,
                s.method,
                s.task,
                Text(status, style=STATUS_STYLES.get(status, "")),
                fmt_metric(s.best.primary if s.best else None),
                fmt_number(s.loss.last),
                str(s.step),
                fmt_duration(s.duration),
            )

    def _short(self, run_dir: Path) -> str:
        """A legend label: the id without its date stamp when that is still unique."""
        parts = run_dir.name.split("-", 2)
        short = parts[2] if len(parts) == 3 else run_dir.name
        shorts = [d.name.split("-", 2)[-1] for d in self.run_dirs]
        return short if shorts.count(short) == 1 else run_dir.name

    def render_config(self) -> None:
        table = self.query_one("#compare-config", DataTable)
        table.clear(columns=True)
        table.add_column("setting")
        for run_dir in self.run_dirs:
            table.add_column(self._short(run_dir))
        rows = config_diff(self.configs, self.only_differences)
        for key, values, differs in rows:
            style = "bold yellow" if differs else ""
            table.add_row(Text(key, style=style), *(Text(v[:40], style=style) for v in values))
        which = "only the settings that differ" if self.only_differences else "every setting"
        table.border_title = f"Config: {which} (d toggles)"

    def action_toggle_diff(self) -> None:
        self.only_differences = not self.only_differences
        self.render_config()

    def action_back(self) -> None:
        self.dismiss()
