"""The group timeline: sources × steps, showing membership over the run (Figure 7 of the DTVG paper)."""

from __future__ import annotations

import contextlib
from typing import Any

from rich.text import Text
from textual.events import MouseScrollDown, MouseScrollUp
from textual.message import Message
from textual.widget import Widget

from dtvg_tui.series import GroupTrack

SHADES = " ░▒▓█"
"""Membership fraction 0 … 1 of a column of steps."""


def shade(fraction: float) -> str:
    """The block for a fraction of steps selected: blank for none, █ for all, ░▒▓ in between."""
    if fraction <= 0:
        return "·"
    if fraction >= 1:
        return SHADES[-1]
    return SHADES[1 + min(2, int(fraction * 3))]


class GroupTimeline(Widget):
    """One row per source, one column per bucket of steps; a ▲ marks the step shown in the group panel."""

    class Scrolled(Message):
        """The user scrolled over the timeline: move the shown step by `delta` events."""

        def __init__(self, delta: int) -> None:
            super().__init__()
            self.delta = delta

    LABEL = 10

    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id)
        self.track: GroupTrack | None = None
        """The group events shown."""
        self.cursor: int | None = None
        """Index of the marked event (None: the last)."""
        self.lock: Any = contextlib.nullcontext()
        """Held while reading the track (the loader thread appends to it)."""
        self.border_title = "Group timeline"

    def show(self, track: GroupTrack, cursor: int | None) -> None:
        self.track, self.cursor = track, cursor
        with self.lock:  # set here, not in render(): a border set while rendering shows a frame late
            subtitle = (
                f"steps {int(track.steps[0])}…{int(track.steps[-1])}, {len(track.changes)} changes"
                if len(track)
                else ""
            )
        self.border_subtitle = subtitle
        self.refresh(layout=True)

    def get_content_height(self, container, viewport, width: int) -> int:  # noqa: ANN001
        return (len(self.track.sources) + 1) if self.track and len(self.track) else 1

    def render(self) -> Text:
        with self.lock:
            return self._build()

    def _build(self) -> Text:
        track = self.track
        if track is None or not len(track):
            return Text("No group events (yet).", style="dim")
        width = max(1, self.content_size.width - self.LABEL)
        n = len(track)
        rows = track.membership(width)
        buckets = len(rows[0]) if rows else 0
        cursor = n - 1 if self.cursor is None else self.cursor
        mark = min(buckets - 1, cursor * buckets // n) if buckets else 0
        cell = max(1, width // max(1, buckets))  # short runs: stretch each step over several columns
        text = Text(no_wrap=True, overflow="crop")
        for name, row in zip(track.sources, rows, strict=True):
            text.append(f"{name[: self.LABEL - 1]:<{self.LABEL}}", style="bold")
            for b, fraction in enumerate(row):
                style = "green" if fraction > 0 else "dim"
                if b == mark:
                    style += " reverse"
                text.append(shade(fraction) * cell, style=style)
            text.append("\n")
        text.append(f"{'@' + str(int(track.steps[cursor])):<{self.LABEL}}", style="yellow")
        text.append(" " * (mark * cell + cell // 2) + "▲", style="bold yellow")
        return text

    def on_mouse_scroll_up(self, event: MouseScrollUp) -> None:
        event.stop()
        self.post_message(self.Scrolled(-max(1, len(self.track or ()) // 100)))

    def on_mouse_scroll_down(self, event: MouseScrollDown) -> None:
        event.stop()
        self.post_message(self.Scrolled(max(1, len(self.track or ()) // 100)))
