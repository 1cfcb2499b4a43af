"""A run's user annotations (tags and note, in meta.json), and the cleaning of text a user wrote so
that it stores as valid Unicode and shows as text.

Standard library only, like the run folder it reads (`runfolder`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dtvg_engine.errors import UserError
from dtvg_engine.runs.atomic import write_json_atomic
from dtvg_engine.runs.runfolder import META, META_LOCK
from dtvg_engine.runs.runowner import locked
from dtvg_engine.runs.safefiles import FileRefused, parse_json, read_bytes


def read_meta(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The run's user annotations `{"tags": [...], "note": "..."}`; empty ones when there is no meta.json.

    Bytes that are not UTF-8 read as U+FFFD, so a damaged note costs those characters, not the note.
    """
    try:
        meta = parse_json(read_bytes(Path(run_dir) / META).decode("utf-8", errors="replace"))
    except (OSError, ValueError):
        meta = {}
    if not isinstance(meta, dict):
        meta = {}
    tags = meta.get("tags")
    note = meta.get("note")
    return {
        "tags": [clean_text(str(t)) for t in tags] if isinstance(tags, list) else [],
        "note": clean_text(note) if isinstance(note, str) else "",
    }


def clean_text(text: str) -> str:
    """`text` as valid Unicode: stray bytes (lone surrogates, as a non-UTF-8 argv gives) become U+FFFD."""
    try:
        raw = text.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        raw = text.encode("utf-8", errors="replace")
    return raw.decode("utf-8", errors="replace")


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""The characters a terminal acts on rather than shows (ESC, BEL, CR, the C1 set...), newline and tab
aside."""


def printable(text: str) -> str:
    """`text` with the control characters a terminal acts on written out as escapes ("\\x1b"): a tag, a
    note, a log line or a run folder's name made by someone else is shown as text, and cannot move the
    cursor, retitle the window or hide what follows it."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def check_tag(tag: str) -> None:
    """Refuse a tag no listing could show or `dtvg runs tag` remove: empty, or starting with "-"."""
    if not tag.strip():
        raise UserError("a tag may not be empty")
    if tag.startswith("-"):
        raise UserError(f"tag {tag!r} starts with '-', which `dtvg runs tag` reads as removing a tag")


def update_meta(
    run_dir: str | os.PathLike[str],
    *,
    tags: list[str] | None = None,
    add_tags: Sequence[str] = (),
    remove_tags: Sequence[str] = (),
    note: str | None = None,
) -> dict[str, Any]:
    """Change the run's annotations and return the new ones.

    `tags` replaces the tags; `remove_tags` then `add_tags` edit them; `note` replaces the note (None
    leaves it). The read-modify-write holds the run's meta lock, so parallel commands lose nothing.
    """
    run_dir = Path(run_dir)
    for tag in [*(tags or []), *add_tags]:
        check_tag(tag)
    with locked(run_dir / META_LOCK, f"change the tags or note of run {run_dir.name}"):
        meta = read_meta(run_dir)
        current = meta["tags"] if tags is None else [clean_text(str(t)) for t in tags]
        removed = {clean_text(t) for t in remove_tags}
        current = [t for t in current if t not in removed] + [clean_text(t) for t in add_tags]
        meta["tags"] = list(dict.fromkeys(current))
        if note is not None:
            meta["note"] = clean_text(note)
        try:
            write_json_atomic(run_dir / META, meta)
        except FileRefused:
            raise
        except OSError as e:  # a full disk: the old meta.json stands
            raise UserError(
                f"cannot change the tags or note of run {run_dir.name}: {e.strerror}; free some space and "
                "try again"
            ) from e
    return meta
