"""The help screen (`?`): every key of every screen, with the binding id a user keymap can rebind."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from dtvg_tui import keys

KEY_NAMES = {
    "question_mark": "?",
    "slash": "/",
    "space": "space",
    "greater_than_sign": ">",
    "less_than_sign": "<",
    "minus": "-",
    "left_square_bracket": "[",
    "right_square_bracket": "]",
    "left": "←",
    "right": "→",
}


def key_label(key: str) -> str:
    return ",".join(KEY_NAMES.get(k.strip(), k.strip()) for k in key.split(","))


class HelpScreen(ModalScreen[None]):
    """Keys by screen; escape, q or ? closes it."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        keymap = getattr(self.app, "user_keymap", {})
        table = Table(box=None, expand=True, padding=(0, 1))
        table.add_column("key", style="bold cyan", width=12)
        table.add_column("action")
        table.add_column("binding id (for the keymap)", style="dim")
        for screen, bindings in keys.SCREEN_BINDINGS.items():
            table.add_row(Text(screen, style="bold underline"), "", "")
            for binding in bindings:
                key = keymap.get(binding.id or "", binding.key)
                table.add_row(key_label(key), binding.description, binding.id)
            table.add_row("", "", "")
        table.add_row(Text("Palette", style="bold underline"), "", "")
        table.add_row("ctrl+p", "command palette: every action by name", "")
        path = keys.keymap_path()
        footer = Text.assemble(
            ("Keymap: ", "bold"),
            str(path) if path else "none (set $DTVG_KEYMAP or create ~/.config/dtvg/keymap.toml)",
            "\nFormat (TOML): ",
            ('"dtvg.runs.stop" = "ctrl+s"', "cyan"),
            "   JSON: ",
            ('{"dtvg.runs.stop": "ctrl+s"}', "cyan"),
        )
        with VerticalScroll(id="help-body") as body:
            body.border_title = "DTVG Studio keys (escape to close)"
            yield Static(table)
            yield Static(footer)
