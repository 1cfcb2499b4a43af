"""dtvg-tui: the Textual dashboard of DTVG Studio.

It reads run folders and their event streams, keeps the history index fresh and launches workers
(docs/architecture.md, 'Run folder', 'Event stream', 'History index'); it never imports torch, transformers,
peft or datasets, so it starts in well under a second. Domain logic lives in plain modules (`series`,
`runindex`, `fmt`, `keys`, `configdiff`, `similarity`); the UI is grouped by feature under `screens/` and
`widgets/`.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
