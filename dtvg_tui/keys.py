"""Every key binding of the dashboard, with a stable id, and the user keymap that can rebind them.

Bindings carry ids (`dtvg.<screen>.<action>`), so a user keymap, a TOML or JSON object mapping ids to
keys (`"dtvg.runs.stop" = "ctrl+s"`, several keys comma-separated), overrides them through Textual's
`App.set_keymap`. The keymap file is `$DTVG_KEYMAP`, else `keymap.toml` or `keymap.json` in the user
config dir (`~/.config/dtvg/` on Linux). Plain module: no Textual widgets, just `Binding`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from textual.binding import Binding

from dtvg_engine.errors import UserError

APP_BINDINGS = [
    Binding("r", "show_runs", "Runs", id="dtvg.app.runs"),
    Binding("n", "new_run", "New run", id="dtvg.app.new_run"),
    Binding("question_mark", "help", "Help", id="dtvg.app.help"),
    Binding("q", "quit", "Quit", id="dtvg.app.quit"),
]

RUNS_BINDINGS = [
    Binding("enter", "open_detail", "Detail", id="dtvg.runs.detail"),
    Binding("i", "inspect", "Inspector", id="dtvg.runs.inspect"),
    Binding("space", "toggle_select", "Select", id="dtvg.runs.select"),
    Binding("c", "compare", "Compare", id="dtvg.runs.compare"),
    Binding("slash", "focus_filter", "Filter", id="dtvg.runs.filter"),
    Binding("x", "cycle_status", "Status filter", id="dtvg.runs.status_filter"),
    Binding("greater_than_sign", "sort_next", "Sort", id="dtvg.runs.sort_next"),
    Binding("less_than_sign", "sort_prev", "Sort back", id="dtvg.runs.sort_prev", show=False),
    Binding("minus", "sort_reverse", "Reverse", id="dtvg.runs.sort_reverse", show=False),
    Binding("t", "tag", "Tag", id="dtvg.runs.tag"),
    Binding("o", "note", "Note", id="dtvg.runs.note"),
    Binding("s", "stop", "Stop", id="dtvg.runs.stop"),
    Binding("k", "kill", "Kill", id="dtvg.runs.kill"),
    Binding("u", "resume", "Resume", id="dtvg.runs.resume"),
    Binding("S", "studies", "Studies", id="dtvg.runs.studies"),
    Binding("escape", "clear_filter", "Clear filter", id="dtvg.runs.clear", show=False),
]

DETAIL_BINDINGS = [
    Binding("escape", "back", "Back", id="dtvg.detail.back"),
    Binding("f", "toggle_follow", "Follow", id="dtvg.detail.follow"),
    Binding("left", "step(-1)", "Step back", id="dtvg.detail.step_back", show=False),
    Binding("right", "step(1)", "Step fwd", id="dtvg.detail.step_forward", show=False),
    Binding("pageup", "step(-10)", "Back 10", id="dtvg.detail.page_back", show=False),
    Binding("pagedown", "step(10)", "Fwd 10", id="dtvg.detail.page_forward", show=False),
    Binding("i", "inspect", "Inspector", id="dtvg.detail.inspect"),
    Binding("s", "stop", "Stop", id="dtvg.detail.stop"),
    Binding("k", "kill", "Kill", id="dtvg.detail.kill"),
    Binding("u", "resume", "Resume", id="dtvg.detail.resume"),
]

INSPECTOR_BINDINGS = [
    Binding("escape", "back", "Back", id="dtvg.inspector.back"),
    Binding("left", "step(-1)", "Step -1", id="dtvg.inspector.step_back"),
    Binding("right", "step(1)", "Step +1", id="dtvg.inspector.step_forward"),
    Binding("pageup", "step(-10)", "-10", id="dtvg.inspector.page_back", show=False, priority=True),
    Binding("pagedown", "step(10)", "+10", id="dtvg.inspector.page_forward", show=False, priority=True),
    Binding("home", "first", "First", id="dtvg.inspector.first", show=False, priority=True),
    Binding("end", "last", "Last", id="dtvg.inspector.last", show=False, priority=True),
    Binding("left_square_bracket", "change(-1)", "Prev change", id="dtvg.inspector.prev_change"),
    Binding("right_square_bracket", "change(1)", "Next change", id="dtvg.inspector.next_change"),
    Binding("h", "toggle_heatmap", "Heatmap", id="dtvg.inspector.heatmap"),
]

COMPARE_BINDINGS = [
    Binding("escape", "back", "Back", id="dtvg.compare.back"),
    Binding("d", "toggle_diff", "Only differences", id="dtvg.compare.only_diff"),
]

STUDIES_BINDINGS = [
    Binding("escape", "back", "Back", id="dtvg.studies.back"),
]

STUDY_BINDINGS = [
    Binding("escape", "back", "Back", id="dtvg.study.back"),
    Binding("c", "compare_row", "Compare row", id="dtvg.study.compare"),
    Binding("g", "start", "Start/resume", id="dtvg.study.start"),
    Binding("s", "stop", "Stop", id="dtvg.study.stop"),
    Binding("e", "export", "Export table", id="dtvg.study.export"),
    Binding("1", "show_tab('study-results')", "Results", id="dtvg.study.results"),
    Binding("2", "show_tab('study-stage1')", "Stage 1", id="dtvg.study.stage1"),
    Binding("3", "show_tab('study-similarity')", "Similarity", id="dtvg.study.similarity"),
    Binding("4", "show_tab('study-groups')", "Groups", id="dtvg.study.groups"),
]

STUDY_CELL_BINDINGS = [
    Binding("escape", "back", "Back", id="dtvg.study_cell.back"),
    Binding("enter", "open_detail", "Detail", id="dtvg.study_cell.detail"),
    Binding("i", "inspect", "Inspector", id="dtvg.study_cell.inspect"),
    Binding("c", "compare", "Compare seeds", id="dtvg.study_cell.compare"),
]

NEW_RUN_BINDINGS = [
    Binding("escape", "back", "Back", id="dtvg.new_run.back"),
    Binding("ctrl+l", "launch", "Launch", id="dtvg.new_run.launch"),
]

SCREEN_BINDINGS: dict[str, list[Binding]] = {
    "Everywhere": APP_BINDINGS,
    "Runs": RUNS_BINDINGS,
    "Run detail": DETAIL_BINDINGS,
    "Grouping inspector": INSPECTOR_BINDINGS,
    "Compare": COMPARE_BINDINGS,
    "Studies": STUDIES_BINDINGS,
    "Study": STUDY_BINDINGS,
    "Study cell (its runs)": STUDY_CELL_BINDINGS,
    "New run": NEW_RUN_BINDINGS,
}
"""Every screen's bindings, for the help screen."""

BINDING_IDS = {b.id for bindings in SCREEN_BINDINGS.values() for b in bindings}


def keymap_path() -> Path | None:
    """`$DTVG_KEYMAP`, else the first of keymap.toml / keymap.json in the user config dir that exists."""
    env = os.environ.get("DTVG_KEYMAP")
    if env:
        return Path(env)
    from platformdirs import user_config_dir

    base = Path(user_config_dir("dtvg"))
    for name in ("keymap.toml", "keymap.json"):
        if (base / name).is_file():
            return base / name
    return None


def load_keymap(path: Path | None) -> dict[str, str]:
    """The binding id → keys mapping of a keymap file (`{}` when there is none).

    TOML or JSON by suffix; a `[keymap]` table, if present, is used. Unknown ids are refused so that a
    typo does not silently do nothing.
    """
    if path is None:
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(
            f"cannot read keymap {path} ({e.strerror}); fix $DTVG_KEYMAP or remove the file"
        ) from e
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]

            data = tomllib.loads(text)
    except ValueError as e:
        raise UserError(f"keymap {path} is not valid {path.suffix[1:].upper() or 'TOML'}: {e}") from e
    if isinstance(data, dict) and isinstance(data.get("keymap"), dict):
        data = data["keymap"]
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise UserError(
            f'keymap {path} must map binding ids to key strings, e.g. "dtvg.runs.stop" = "ctrl+s"'
        )
    unknown = sorted(set(data) - BINDING_IDS)
    if unknown:
        raise UserError(f"keymap {path}: unknown binding id(s) {', '.join(unknown)}; press ? to see them")
    return {str(k): str(v) for k, v in data.items()}
