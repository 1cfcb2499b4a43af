"""Small text formatters shared by the screens (pure functions, no Textual)."""

from __future__ import annotations

import math
import time

STATUS_STYLES: dict[str, str] = {
    "pending": "yellow",
    "running": "bold cyan",
    "suspended": "bold yellow",
    "completed": "green",
    "failed": "bold red",
    "stopped": "magenta",
    "killed": "red",
}
"""Rich style of every run status."""


def fmt_duration(seconds: float | None) -> str:
    """`42s`, `3m05s`, `2h04m`; empty for None."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def fmt_time(stamp: float | None) -> str:
    """A unix time as local `YYYY-mm-dd HH:MM` (empty for None)."""
    if stamp is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))


def fmt_metric(value: float | None, digits: int = 4) -> str:
    """A metric with `digits` decimals, empty for None or NaN."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{value:.{digits}f}"


def fmt_number(value: float | None) -> str:
    """A compact number for losses, rates and speeds (`0.6931`, `1.2e-05`, `123.4`)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    if magnitude < 1e-3 or magnitude >= 1e5:
        return f"{value:.2e}"
    if magnitude >= 100:
        return f"{value:.1f}"
    return f"{value:.4f}"


def fmt_progress(step: int, total: int | None) -> str:
    """`37/100` or `37`."""
    return f"{step}/{total}" if total else str(step)
