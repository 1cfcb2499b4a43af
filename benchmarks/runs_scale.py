"""`dtvg runs list` and the dashboard's Runs table over many runs: `python benchmarks/runs_scale.py
[--runs N] [--reference N] [--json]`.

Generates two runs directories of small finished runs (`synthetic_runs.make_scale_runs`; made-up
numbers, only the count matters): N runs (default 5,000, issue 24's dashboard took 5.7 s to its first
screen there) and a reference of 500 (the README's 0.51 s). Each is indexed once, as any earlier
session would have. Then, each in a fresh process (interpreter start and imports included):

- `dtvg runs list` printed to a pipe, and `dtvg runs list --json`;
- the dashboard: process start → the Runs table shows rows, and → the first scan of every run folder
  is applied.

Prints each figure for N runs as a ratio to the same figure for the reference, measured in the same run
(10 would be linear in the number of runs), and the seconds of both. Do not read figures off a loaded
machine. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

DASHBOARD = r"""
import asyncio, json, os, sys, time
t_start = float(os.environ["BENCH_T0"])
from dtvg_tui.app import DtvgApp

async def main():
    app = DtvgApp(sys.argv[1], refresh_interval=1.0, follow_interval=0.5)
    out = {}
    async with app.run_test(size=(160, 45)):
        while not getattr(app.screen, "shown", None):
            await asyncio.sleep(0.005)
        out["first_screen_s"] = time.time() - t_start
        out["rows"] = len(app.screen.shown)
        while not app.screen._scanned_once or app.screen._scanning:
            await asyncio.sleep(0.02)
        out["full_scan_s"] = time.time() - t_start
    print("RESULT " + json.dumps(out), flush=True)

asyncio.run(main())
"""


def build(runs_dir: Path, count: int) -> None:
    from dtvg_engine.runs.history import History

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from synthetic_runs import make_scale_runs

    make_scale_runs(runs_dir, count=count, big_lines=1000)
    History(runs_dir).rebuild()


def timed(args: list[str]) -> float:
    """Seconds of one fresh process running `args` (its output discarded; it must succeed)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t = time.perf_counter()
    subprocess.run(args, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def measure(runs_dir: Path) -> dict[str, float]:
    dtvg = [sys.executable, "-m", "dtvg_engine.cli"]
    figures = {
        "list_s": timed([*dtvg, "runs", "list", "--runs-dir", str(runs_dir)]),
        "list_json_s": timed([*dtvg, "runs", "list", "--json", "--runs-dir", str(runs_dir)]),
    }
    env = {**os.environ, "PYTHONPATH": str(REPO), "BENCH_T0": repr(time.time()), "TEXTUAL_ANIMATIONS": "none"}
    child = subprocess.run(
        [sys.executable, "-c", DASHBOARD, str(runs_dir)], cwd=REPO, env=env, capture_output=True, text=True
    )
    result = next((json.loads(s[7:]) for s in child.stdout.splitlines() if s.startswith("RESULT ")), None)
    if result is None:
        sys.exit(f"dashboard child failed:\n{child.stderr}")
    return {**figures, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--reference", type=int, default=500, help="runs of the reference (default 500)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        many, few = Path(tmp) / "many", Path(tmp) / "few"
        build(many, args.runs)
        build(few, args.reference)
        measured, reference = measure(many), measure(few)
    keys = ("list_s", "list_json_s", "first_screen_s", "full_scan_s")
    figures = {
        "runs": args.runs,
        "reference_runs": args.reference,
        "rows_shown": measured["rows"],
        **{f"{key[:-2]}_ratio": round(measured[key] / reference[key], 2) for key in keys},
        **{key: round(measured[key], 3) for key in keys},
        **{f"reference_{key}": round(reference[key], 3) for key in keys},
        "load_average": os.getloadavg()[0],  # other load on the machine skews every figure
    }
    if not args.json:
        for key in keys:
            print(
                f"{key[:-2]}: {args.runs} runs take {figures[f'{key[:-2]}_ratio']} x the time of "
                f"{args.reference} ({measured[key]:.3f} s against {reference[key]:.3f} s)"
            )
        print(f"the Runs table holds {measured['rows']} rows of {args.runs} (the rest by filter or sort)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
