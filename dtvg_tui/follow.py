"""Follow a run's `events.jsonl` from the last byte offset, in bounded chunks (plain, thread-safe use).

One `EventFollower` per followed file, used from one worker thread: `read()` returns the complete lines
appended since the last call (at most about `chunk_bytes` of them), so a 100,000-line file loads in
pieces the screen can show progress for, and a live run costs only its new lines.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dtvg_engine.events import parse_lines


class EventFollower:
    """Incremental reader of one events file."""

    def __init__(self, path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> None:
        self.path = Path(path)
        """The events.jsonl followed."""
        self.chunk_bytes = chunk_bytes
        """Most bytes read per call."""
        self.offset = 0
        """Bytes consumed so far (always at a line boundary)."""
        self.size = 0
        """File size at the last read."""

    @property
    def at_end(self) -> bool:
        """Whether the last read reached the end of the file."""
        return self.offset >= self.size

    def read(self) -> list[dict[str, Any]]:
        """The events of the complete lines after `offset` (up to about `chunk_bytes`)."""
        try:
            with open(self.path, "rb") as f:
                self.size = os.fstat(f.fileno()).st_size
                if self.size < self.offset:  # truncated or replaced: start again
                    self.offset = 0
                f.seek(self.offset)
                limit = self.chunk_bytes
                while True:
                    chunk = f.read(limit)
                    events, consumed = parse_lines(chunk)
                    if consumed or len(chunk) < limit:
                        break
                    f.seek(self.offset)  # one line longer than the chunk: read more at once
                    limit *= 2
        except FileNotFoundError:
            self.size = 0
            return []
        self.offset += consumed
        return events
