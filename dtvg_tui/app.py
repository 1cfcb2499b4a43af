"""The dashboard application and the `dtvg-tui [--runs-dir DIR] [--study STUDY.toml]` entry point."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

from textual.app import App, SystemCommand
from textual.screen import Screen

from dtvg_engine.errors import UserError
from dtvg_engine.runs.runfolder import default_runs_dir
from dtvg_engine.train import tasks
from dtvg_tui import keys
from dtvg_tui.runindex import RunIndex
from dtvg_tui.screens.runs import RunsScreen


class DtvgApp(App[None]):
    """DTVG Studio's dashboard: runs, live run detail, grouping inspector, compare, new run."""

    CSS_PATH = "app.tcss"
    TITLE = "DTVG Studio"
    BINDINGS = keys.APP_BINDINGS

    def __init__(
        self,
        runs_dir: str | Path | None = None,
        keymap: dict[str, str] | None = None,
        refresh_interval: float = 1.0,
        follow_interval: float = 0.5,
        study: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.runs_dir = Path(runs_dir) if runs_dir is not None else default_runs_dir()
        """The runs directory shown and written to."""
        self.index = RunIndex(self.runs_dir)
        """Summaries of every run, kept fresh by the Runs screen."""
        self.user_keymap = dict(keymap or {})
        """Binding id → keys overrides from the user keymap file."""
        self.refresh_interval = refresh_interval
        """Seconds between two scans of the runs directory."""
        self.follow_interval = follow_interval
        """Seconds between two reads of a followed run's events."""
        self.study = Path(study) if study is not None else None
        """The study file opened at start (`--study`), over the Runs screen."""
        self.sub_title = str(self.runs_dir)

    def on_mount(self) -> None:
        if self.user_keymap:
            self.set_keymap(self.user_keymap)
        self.push_screen(RunsScreen())
        if self.study is not None:
            self.open_study(self.study)

    @property
    def runs_screen(self) -> RunsScreen:
        return next(s for s in self.screen_stack if isinstance(s, RunsScreen))

    def action_show_runs(self) -> None:
        """Back to the Runs screen (closing every screen above it)."""
        while len(self.screen_stack) > 2 and not isinstance(self.screen, RunsScreen):
            self.pop_screen()

    def action_new_run(self) -> None:
        from dtvg_tui.screens.new_run import NewRunScreen

        if not isinstance(self.screen, NewRunScreen):
            self.push_screen(NewRunScreen())

    def action_help(self) -> None:
        from dtvg_tui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def open_detail(self, run_dir: Path) -> None:
        from dtvg_tui.screens.detail import RunDetailScreen

        self.push_screen(RunDetailScreen(run_dir))

    def open_inspector(self, run_dir: Path) -> None:
        from dtvg_tui.screens.inspector import InspectorScreen

        self.push_screen(InspectorScreen(run_dir))

    def open_compare(self, run_dirs: list[Path]) -> None:
        from dtvg_tui.screens.compare import CompareScreen

        self.push_screen(CompareScreen(run_dirs))

    def study_folders(self) -> list[Path]:
        """Where pipeline files are looked for: `experiments/` here and next to the runs directory."""
        folders = [Path("experiments"), self.runs_dir.resolve().parent / "experiments"]
        unique = {folder.resolve(): folder for folder in folders if folder.is_dir()}
        return list(unique.values())

    def open_studies(self) -> None:
        from dtvg_tui.screens.study import StudiesScreen

        self.push_screen(StudiesScreen(self.study_folders()))

    def open_study(self, path: Path) -> None:
        """Open the study of a pipeline file (or of a pipeline's record in the runs directory)."""
        from dtvg_engine.studies.studyprocess import load_study
        from dtvg_tui.screens.study import StudyScreen

        try:
            spec, pipeline_file = load_study(path)
        except UserError as e:
            self.notify(str(e), severity="error")
            return
        self.push_screen(StudyScreen(spec, pipeline_file))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Runs", "Show every run", self.action_show_runs)
        yield SystemCommand("New run", "Launch a stage-1, stage-2 or pipeline run", self.action_new_run)
        yield SystemCommand("Keys", "Every key binding and its id", self.action_help)
        yield SystemCommand("Studies", "Open a study: its results table, filling in live", self.open_studies)
        runs = self.runs_screen if any(isinstance(s, RunsScreen) for s in self.screen_stack) else None
        if runs is not None and isinstance(screen, RunsScreen):
            yield SystemCommand(
                "Open run detail", "Live curves and group of the highlighted run", runs.action_open_detail
            )
            yield SystemCommand(
                "Grouping inspector", "Groups step by step, similarity heatmap", runs.action_inspect
            )
            yield SystemCommand(
                "Compare selected runs", "Curves, metrics and config diff", runs.action_compare
            )
            yield SystemCommand("Stop run", "Graceful stop (checkpoint, then finish)", runs.action_stop)
            yield SystemCommand("Kill run", "Kill the worker's whole process group", runs.action_kill)
            yield SystemCommand(
                "Resume run", "Continue a stopped run from its checkpoint", runs.action_resume
            )
            yield SystemCommand("Tag run", "Add tags to the highlighted run", runs.action_tag)
            yield SystemCommand("Note on run", "Write a note on the highlighted run", runs.action_note)


def main(argv: list[str] | None = None) -> None:
    """`dtvg-tui [--runs-dir DIR] [--study STUDY.toml]`."""
    parser = argparse.ArgumentParser(prog="dtvg-tui", description="DTVG Studio dashboard")
    parser.add_argument(
        "--runs-dir", type=Path, default=None, help="runs directory (default: $DTVG_RUNS_DIR or ./runs)"
    )
    parser.add_argument(
        "--study", type=Path, default=None, help="open the study view of this pipeline file (TOML)"
    )
    args = parser.parse_args(argv)
    try:
        keymap = keys.load_keymap(keys.keymap_path())
        tasks.use_file(None)  # $DTVG_TASKS: the user's tasks, offered by the New-run form
        if args.study is not None:
            from dtvg_engine.studies.studyprocess import load_study

            load_study(args.study)  # a bad study file is refused here, not inside the dashboard
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    DtvgApp(args.runs_dir, keymap=keymap, study=args.study).run()


if __name__ == "__main__":
    main()
