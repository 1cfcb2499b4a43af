"""The real single-node Slurm cluster of `scripts/slurm-test-cluster.sh`, for the tests marked `slurm`.

`.ci/run` installs and starts it and sets DTVG_SLURM_REQUIRED=1, so there a missing cluster fails
the tests. Elsewhere they use a running test cluster, and skip (saying how to start one) without it:
running the tests never starts daemons on a machine unless DTVG_SLURM_REQUIRED asks for them.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm-test-cluster.sh"
START = "bash scripts/slurm-test-cluster.sh install && bash scripts/slurm-test-cluster.sh start"


def _conf(command: str) -> str | None:
    """The SLURM_CONF the script prints for `command` (env or start), None when it fails."""
    done = subprocess.run(["bash", str(SCRIPT), command], capture_output=True, text=True, timeout=120)
    line = done.stdout.strip().splitlines()[-1:] if done.returncode == 0 else []
    return line[0].removeprefix("export SLURM_CONF=") if line else None


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[str]:
    """The test cluster's SLURM_CONF, exported to this process (and so to every command and job it starts)."""
    required = os.environ.get("DTVG_SLURM_REQUIRED") == "1"
    conf = _conf("start" if required else "env")
    if conf is None:
        reason = f"no Slurm test cluster is running; start one with `{START}`"
        if required:
            pytest.fail(f"DTVG_SLURM_REQUIRED=1 but {reason}")
        pytest.skip(reason)
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    yield conf
    if saved is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = saved


def restart_cluster() -> None:
    """Stop the test cluster and start it afresh: its state is deleted, so its job ids begin again at 1,
    as after a new controller, a wrap-around or a move to another cluster."""
    for command in ("stop", "start"):
        done = subprocess.run(["bash", str(SCRIPT), command], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"slurm-test-cluster.sh {command}: {done.stderr}"


def on_cluster(test: Callable) -> Callable:
    """Mark a test `slurm` and give it the test cluster (the `slurm_cluster` fixture)."""
    return pytest.mark.slurm(pytest.mark.usefixtures("slurm_cluster")(test))


def wait_for(what: str, check: Callable[[], object], timeout: float = 180, every: float = 0.5) -> object:
    """Poll `check` until it returns something truthy and return that; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
