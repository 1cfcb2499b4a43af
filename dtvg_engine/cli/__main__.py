"""`python -m dtvg_engine.cli` runs `dtvg`."""

from dtvg_engine.cli import main

main()
