"""Making a run live honestly in a test: a process that owns it as its worker does (holds its worker
lock, its pid recorded there). A pid in a file makes no run live: pids are reused."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dtvg_engine.runs.runowner import claim_run, record_owner

_STAND_IN = """
import os, sys, time
from dtvg_engine.runs.runowner import claim_run, record_owner
record_owner(claim_run(sys.argv[1]), os.getpid())
print("owned", flush=True)
time.sleep(600)
"""


@contextmanager
def owning(run_dir: Path) -> Iterator[int]:
    """This process owns the run for the block, as a worker that writes the test's events; its pid."""
    fd = claim_run(run_dir)
    record_owner(fd, os.getpid())
    try:
        yield os.getpid()
    finally:
        os.close(fd)


@contextmanager
def stand_in_worker(run_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """A real process of its own that owns the run (and does nothing else) for the block."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    worker = subprocess.Popen(
        [sys.executable, "-c", _STAND_IN, str(run_dir)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert worker.stdout is not None and worker.stdout.readline() == "owned\n"
        yield worker
    finally:
        worker.kill()
        worker.wait()
