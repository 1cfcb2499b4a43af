"""dtvg-tui: the Textual dashboard of DTVG Studio.

It reads run folders (DESIGN §3) and their event streams (§4), keeps the history index (§5) fresh and
launches workers; it never imports torch, transformers, peft or datasets, so it starts in well under a
second. Domain logic lives in plain modules (`series`, `runindex`, `fmt`, `keys`, `configdiff`,
`similarity`); the UI is grouped by feature under `screens/` and `widgets/`.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
