"""References into docs/architecture.md name sections it has, and nothing cites a design file users lack."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCHITECTURE = REPO / "docs" / "architecture.md"
SOURCES = ("dtvg_engine", "dtvg_tui", "tests", "benchmarks", "experiments", "scripts")
REFERENCE = re.compile(r"docs/architecture\.md[,\s(]*((?:(?:,|and)?\s*'[^'\n]+'\s*)+)")
"""`docs/architecture.md, 'Run folder'`, `docs/architecture.md ('Run folder', 'Event stream')`, ..."""


def texts() -> dict[Path, str]:
    files = [REPO / "README.md"] + [p for folder in SOURCES for p in (REPO / folder).rglob("*.py")]
    return {path: path.read_text(encoding="utf-8") for path in files}


def test_every_reference_names_a_section() -> None:
    sections = set(re.findall(r"^## (.+)$", ARCHITECTURE.read_text(encoding="utf-8"), re.M))
    cited = {
        (path.relative_to(REPO), name)
        for path, text in texts().items()
        for names in REFERENCE.findall(text)
        for name in re.findall(r"'([^']+)'", names)
    }
    assert len(cited) > 20  # the pattern finds the references
    assert {(path, name) for path, name in cited if name not in sections} == set()


def test_no_reference_to_a_design_file_outside_the_repository() -> None:
    this = Path(__file__)
    assert [path for path, text in texts().items() if "DESIGN §" in text and path != this] == []
