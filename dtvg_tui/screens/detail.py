"""Run detail: live loss and validation curves, step and speed, and for stage 2 the group panel and timeline.

A worker thread follows events.jsonl from its last byte offset (`events.EventReader`), folds new events into
a `RunSeries` under a lock and asks the UI to redraw; no file is read on the UI thread. Follow mode keeps
the newest step in view; stepping back (←, page up, scrolling the timeline) pauses it, `f` resumes it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, Static
from textual.worker import get_current_worker

from dtvg_engine.errors import UserError
from dtvg_engine.runs.events import Event, EventReader, parse_lines
from dtvg_engine.runs.runfolder import EVENTS, read_config, tail_log
from dtvg_engine.runs.runmeta import printable
from dtvg_engine.runs.runowner import run_owner
from dtvg_engine.runs.runstatus import RunSummary, planned_steps, summarize
from dtvg_engine.runs.safefiles import open_file
from dtvg_engine.train import tasks
from dtvg_tui import keys
from dtvg_tui.fmt import STATUS_STYLES, fmt_duration, fmt_metric, fmt_number, fmt_progress, fmt_time
from dtvg_tui.series import RunSeries
from dtvg_tui.widgets.curves import CurvesPlot
from dtvg_tui.widgets.group_panel import GroupPanel
from dtvg_tui.widgets.group_timeline import GroupTimeline
from dtvg_tui.widgets.samples import SamplesPanel, read_samples

TAIL_BYTES = 1 << 20
"""How much of a long events file is read first, to show the newest state at once."""
CHUNK_BYTES = 1 << 20
"""How much of the file one read folds, so a long history loads in pieces with a progress figure."""


def read_tail(path: Path, size: int) -> list[Event]:
    """The events of the complete lines in the last `size` bytes of a file."""
    with open_file(path) as f:
        f.seek(0, 2)
        end = f.tell()
        f.seek(max(0, end - size))
        chunk = f.read()
    if end > size:
        chunk = chunk[chunk.find(b"\n") + 1 :]
    return parse_lines(chunk[: chunk.rfind(b"\n") + 1].split(b"\n"))[0]


class RunFollowingScreen(Screen[None]):
    """Base of the screens that follow one run's events: the loader thread and the step cursor."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        """The run folder shown."""
        self.series = RunSeries()
        """Everything read from the events so far (mutated by the loader thread under `lock`)."""
        self.lock = threading.Lock()
        """Held while the series is folded or read."""
        self.follow = True
        """Keep the newest step in view."""
        self.cursor = 0
        """Index of the group event shown when not following."""
        self.reading = True
        """Still reading the part of the file that existed when the screen opened."""
        self.loaded_bytes = 0
        self.total_bytes = 0
        self._stop_following = threading.Event()
        self.loaded_at: float | None = None
        self.first_view_at: float | None = None
        """`time.perf_counter()` when the newest step was first drawn (for the benchmark)."""
        """`time.perf_counter()` when the initial load finished (for the benchmark)."""
        try:
            self.config = read_config(self.run_dir)
        except UserError:
            self.config = {}

    def on_mount(self) -> None:
        # Textual calls on_mount of every class in the MRO: subclasses must not call this one again.
        self._follow_events()

    @work(thread=True, group="follow", exit_on_error=False)
    def _follow_events(self) -> None:
        worker = get_current_worker()
        path = self.run_dir / EVENTS
        reader = EventReader(path)
        interval = getattr(self.app, "follow_interval", 0.5)
        stop = self._stop_following
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        if size > 2 * TAIL_BYTES:
            # A long run: show its newest state from the file's tail at once, then fold the whole history
            # into a second series off screen (only a progress figure is redrawn meanwhile) and swap it in.
            preview = RunSeries()
            preview.feed(read_tail(path, TAIL_BYTES))
            with self.lock:
                self.series = preview
            self.total_bytes = size
            self.app.call_from_thread(self.update_view)
            full = RunSeries()
            while not reader.at_end:
                if worker.is_cancelled or stop.is_set():
                    return
                events = reader.read(CHUNK_BYTES)
                if reader.restarted:
                    full = RunSeries()
                full.feed(events)
                self.loaded_bytes, self.total_bytes = reader.offset, reader.size
                self.app.call_from_thread(self.update_progress)
            with self.lock:
                self.series = full
        while not worker.is_cancelled and not stop.is_set():
            events = reader.read(CHUNK_BYTES)
            with self.lock:
                if reader.restarted:  # the file was truncated or replaced: what was folded is void
                    self.series = RunSeries()
                self.series.feed(events)
            self.loaded_bytes, self.total_bytes = reader.offset, reader.size
            was_reading = self.reading
            if reader.at_end and self.reading:  # a torn last line is still being written: not history
                self.reading = False
                self.loaded_at = time.perf_counter()
            if events or was_reading or reader.restarted:
                self.app.call_from_thread(self.update_view)
            if reader.at_end:
                stop.wait(interval)

    def update_progress(self) -> None:
        """Redraw only what shows the loading progress (UI thread)."""

    def on_unmount(self) -> None:
        self._stop_following.set()  # wake the follower so that it ends now

    def update_view(self) -> None:
        """Redraw from the series (UI thread)."""

    # ----- step cursor -----

    def _group_len(self) -> int:
        return len(self.series.group)

    def current_index(self) -> int:
        """The group event shown: the newest while following."""
        n = self._group_len()
        return max(0, n - 1) if self.follow else min(self.cursor, max(0, n - 1))

    def action_step(self, delta: int) -> None:
        n = self._group_len()
        if n == 0:
            return
        index = min(max(0, self.current_index() + delta), n - 1)
        self.cursor = index
        self.follow = index == n - 1 and delta > 0 and self.follow
        self.update_view()

    def action_toggle_follow(self) -> None:
        self.follow = not self.follow
        if not self.follow:
            self.cursor = self.current_index()
        self.notify("Following the newest step." if self.follow else "Follow paused.", timeout=2)
        self.update_view()

    def action_back(self) -> None:
        self.dismiss()

    def run_summary(self) -> RunSummary | None:
        summary = self.app.index.summary(self.run_dir.name)
        if summary is None:
            try:
                summary = summarize(self.run_dir)
            except UserError:
                return None
        return summary

    def status(self) -> str:
        summary = self.app.index.summary(self.run_dir.name)
        if summary is not None:
            return summary.status
        status = self.series.status
        if status == "running" and run_owner(self.run_dir) is None:
            return "killed"
        return status

    def action_stop(self) -> None:
        from dtvg_tui.screens.runs import control_run

        control_run(self, self.run_summary(), "stop")

    def action_kill(self) -> None:
        from dtvg_tui.screens.runs import control_run

        control_run(self, self.run_summary(), "kill")

    def action_resume(self) -> None:
        from dtvg_tui.screens.runs import control_run

        control_run(self, self.run_summary(), "resume")


class RunDetailScreen(RunFollowingScreen):
    """One run, live."""

    BINDINGS = keys.DETAIL_BINDINGS

    _samples_of: tuple[tuple[str, int], ...] | None = None
    """The evaluations seen when the samples panel was last read (it is read again after the next)."""

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="detail-stats")
        with Horizontal(id="detail-body"):
            with Vertical(id="detail-curves"):
                yield CurvesPlot("training loss", id="detail-loss", classes="plot")
                yield CurvesPlot("validation", id="detail-eval", classes="plot")
            with Vertical(id="detail-side"):
                if self.config.get("stage") == "stage2":
                    yield GroupPanel(id="detail-group")
                    yield GroupTimeline(id="detail-timeline")
                if self.generation:
                    yield SamplesPanel(id="detail-samples")
                yield Static(id="detail-log")
        yield Footer()

    @property
    def generation(self) -> bool:
        """Whether the run's task writes text (its samples panel is shown)."""
        task = tasks.TASKS.get(str(self.config.get("target") or self.config.get("task")))
        return task is not None and task.generation

    def on_mount(self) -> None:
        self.sub_title = printable(self.run_dir.name)
        self.query_one("#detail-log", Static).border_title = "Events"
        self.update_view()

    def update_view(self) -> None:
        series = self.series
        with self.lock:
            stats = self._stats()
            loss = [("loss", list(series.loss.xs), list(series.loss.ys))]
            evals = [(split, list(c.xs), list(c.ys)) for split, c in series.evals.items()]
            if self.generation:  # its score is their mean: show each of BLEU and ROUGE-1/2/L too
                evals += [(name, list(c.xs), list(c.ys)) for name, c in series.validation_metrics.items()]
            index = self.current_index()
            has_group = len(series.group) > 0
            state = series.group.state(index) if has_group else None
            log = self._log_text()
            evaluated = tuple((split, e.step) for split, e in sorted(series.last_eval.items()))
        marker = state.step if state is not None and not self.follow else None
        self.query_one("#detail-stats", Static).update(stats)
        self.query_one("#detail-loss", CurvesPlot).show(loss, marker)
        self.query_one("#detail-eval", CurvesPlot).show(evals, marker, ylabel=series.primary_metric)
        self.query_one("#detail-log", Static).update(log)
        if self.generation and evaluated != self._samples_of:  # predictions.jsonl changes at each eval
            self._samples_of = evaluated
            self.query_one("#detail-samples", SamplesPanel).show(read_samples(self.run_dir))
        if self.first_view_at is None and series.step:
            self.first_view_at = time.perf_counter()
        if self.query("#detail-group"):
            self.query_one("#detail-group", GroupPanel).show(state, series.task)
            timeline = self.query_one("#detail-timeline", GroupTimeline)
            timeline.lock = self.lock
            timeline.show(series.group, index if has_group else None)

    def update_progress(self) -> None:
        with self.lock:
            stats = self._stats()
        self.query_one("#detail-stats", Static).update(stats)

    def _stats(self) -> Text:
        s = self.series
        status = self.status()
        text = Text(no_wrap=False)
        stage = s.stage or self.config.get("stage", "")
        method = s.method or self.config.get("method", "")
        task = s.task or self.config.get("target") or self.config.get("task") or ""
        text.append(
            f"{stage} {method} → {task}  " if stage == "stage2" else f"{stage} {task}  ", style="bold"
        )
        text.append(f"● {status}", style=STATUS_STYLES.get(status, ""))
        text.append(f"   step {fmt_progress(s.step, planned_steps(self.config) or planned_steps(s.config))}")
        if s.samples_per_s is not None:
            text.append(f"   {fmt_number(s.samples_per_s)} samples/s")
        if s.loss.last is not None:
            text.append(f"   loss {fmt_number(s.loss.last)}")
        if s.lr:
            text.append("   lr " + " ".join(f"{k} {fmt_number(v)}" for k, v in s.lr.items()))
        if s.best is not None:
            text.append(
                f"   best {s.primary_metric} {fmt_metric(s.best.primary)} @{s.best.step}", style="green"
            )
        text.append(f"\nstarted {fmt_time(s.started)}   ran {fmt_duration(s.duration)}", style="dim")
        if s.segments > 1:
            text.append(f"   resumed {s.segments - 1}×", style="dim")
        error = s.error
        if status == "killed":  # no run_finished: the reason is what the summary knows of its end
            summary = self.app.index.summary(self.run_dir.name)
            error = summary.error if summary is not None else None
        if error:
            text.append(f"\nerror: {printable(error)}", style="red")
        if self.reading and self.total_bytes:
            done = 100 * self.loaded_bytes // max(1, self.total_bytes)
            text.append(f"   loading history {done}% (newest steps shown)", style="yellow")
        text.append(
            "   FOLLOW" if self.follow else "   PAUSED (f: follow)",
            style="bold cyan" if self.follow else "yellow",
        )
        return text

    def _log_text(self) -> Text:
        s = self.series
        text = Text()
        for split, point in sorted(s.last_eval.items()):
            metrics = "  ".join(
                f"{k} {fmt_metric(v)}" for k, v in point.metrics.items() if isinstance(v, float)
            )
            text.append(f"eval {split} @{point.step}: {metrics}\n", style="green")
        for _, level, message in list(s.logs)[-8:]:
            style = "red" if level in ("error", "warning") else "dim"
            text.append(f"[{level}] {printable(message)}\n", style=style)
        if s.checkpoints:
            text.append(f"checkpoint @{s.checkpoints[-1]}\n", style="dim")
        for kind, path in s.artifacts.items():
            text.append(f"{kind}: {Path(path).name}\n", style="dim")
        if self.status() == "killed":  # died without a word: what it printed last, a traceback maybe
            text.append("worker.log (last lines):\n", style="bold")
            for line in tail_log(self.run_dir, 6):
                text.append(printable(line) + "\n", style="dim")
        return text

    @on(GroupTimeline.Scrolled)
    def _timeline_scrolled(self, event: GroupTimeline.Scrolled) -> None:
        self.action_step(event.delta)

    def action_inspect(self) -> None:
        if self.config.get("stage") != "stage2":
            self.notify("The grouping inspector shows stage-2 runs.", severity="warning")
            return
        self.app.open_inspector(self.run_dir)
