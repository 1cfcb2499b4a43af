"""The samples panel of a generation run: a few inputs with the text generated beside their references.

The run rewrites its predictions.jsonl at each evaluation (the latest validation generations, then the
test generations at the chosen checkpoint); the panel reads its first lines again whenever a new
evaluation has been seen. The file comes from a run folder, so it is read as data only: through the
project's safe opener (a regular file, never a link or a device), at most `SAMPLES_BYTES` of it, and a
line that is not a prediction record is skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual.widgets import Static

from dtvg_engine.runs.runfolder import PREDICTIONS
from dtvg_engine.runs.safefiles import open_file, parse_json

SAMPLES_SHOWN = 3
"""How many rows the panel shows."""
SAMPLES_BYTES = 64 << 10
"""The most bytes of predictions.jsonl read for them (its first rows fit many times over)."""
SHOWN_CHARS = 160
"""Each text is cut to this many characters in the panel."""


def read_samples(run_dir: Path, count: int = SAMPLES_SHOWN) -> list[dict[str, Any]]:
    """The first `count` prediction records of the run, or none when the file is missing or refused."""
    try:
        with open_file(Path(run_dir) / PREDICTIONS) as f:
            data = f.read(SAMPLES_BYTES)
    except OSError:  # missing, or refused by safefiles (a link, a folder, a device)
        return []
    records: list[dict[str, Any]] = []
    for line in data.split(b"\n")[:-1]:  # the last piece may be a line cut by the read limit
        try:
            record = parse_json(line)
        except ValueError:
            continue
        if _is_record(record):
            records.append(record)
            if len(records) == count:
                break
    return records


def _is_record(record: Any) -> bool:
    return (
        isinstance(record, dict)
        and isinstance(record.get("input"), str)
        and isinstance(record.get("prediction"), str)
        and isinstance(record.get("references"), list)
        and all(isinstance(ref, str) for ref in record["references"])
    )


def _cut(text: str) -> str:
    text = " ".join(text.split())  # one line each, whatever the text holds
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


class SamplesPanel(Static):
    """A few rows of the run's latest generations: input, prediction, references."""

    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id)
        self.border_title = "Samples"

    def show(self, records: list[dict[str, Any]]) -> None:
        if not records:
            self.border_title = "Samples"
            self.update(Text("No generations yet (written at each evaluation).", style="dim"))
            return
        first = records[0]
        split, step = first.get("split"), first.get("step")
        where = f"{split} @{step}" if isinstance(split, str) and isinstance(step, int) else "latest"
        self.border_title = f"Samples ({where})"
        text = Text()
        for record in records:
            text.append(_cut(record["input"]) + "\n", style="dim")
            text.append("→ " + _cut(record["prediction"]) + "\n", style="bold")
            for ref in record["references"][:2]:
                text.append("  ref " + _cut(ref) + "\n", style="green")
            more = len(record["references"]) - 2
            if more > 0:
                text.append(f"  (+{more} more references)\n", style="dim")
        self.update(text)
