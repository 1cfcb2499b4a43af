"""Speed and scale of the dashboard: `python benchmarks/tui_scale.py [--json] [--runs N] [--lines N]`.

Builds a runs directory of N runs (default 500) plus one stage-2 run whose events.jsonl has ~100,000
lines (synthetic, `dtvg_tui.synthetic`), indexes it once (as any earlier session would have), then in a
fresh process (interpreter start and imports included) measures:

- first screen: process start → the Runs table shows rows (from the history index);
- detail: enter on the big stage-2 run → its screen is up, and → its whole event history is folded;
- RSS after the detail is open;
- responsiveness: while another process appends 50 events/s to a live run followed by the detail
  screen, the largest delay of a 20 ms UI timer (a frame blocked by file reading would show here).

Targets: first screen < 1 s, detail < 1 s, RSS < 250 MB. Prints the figures; the last line is JSON.
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

CHILD = r"""
import asyncio, json, os, resource, sys, time
t_start = float(os.environ["BENCH_T0"])
from dtvg_tui.app import DtvgApp
from dtvg_tui.screens.detail import RunDetailScreen

runs_dir, big, live = sys.argv[1], sys.argv[2], sys.argv[3]


def peak_rss_mb():
    # VmHWM: this process's own peak (ru_maxrss would include the parent's peak before exec)
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

out = {}

async def main():
    app = DtvgApp(runs_dir, refresh_interval=1.0, follow_interval=0.5)
    async with app.run_test(size=(160, 45)) as pilot:
        while not getattr(app.screen, "shown", None):
            await asyncio.sleep(0.005)
        out["first_screen_s"] = time.time() - t_start
        out["rows"] = len(app.screen.shown)
        while not app.screen._scanned_once or app.screen._scanning:
            await asyncio.sleep(0.05)
        out["full_scan_s"] = time.time() - t_start
        out["rss_runs_mb"] = peak_rss_mb()
        t0 = time.perf_counter()
        app.open_detail(__import__("pathlib").Path(runs_dir) / big)
        while not isinstance(app.screen, RunDetailScreen) or not app.screen.is_mounted:
            await asyncio.sleep(0.002)
        screen = app.screen
        while screen.first_view_at is None:
            await asyncio.sleep(0.002)
        out["detail_shown_s"] = screen.first_view_at - t0
        out["detail_shown_step"] = screen.series.step
        while screen.reading:
            await asyncio.sleep(0.01)
        out["detail_loaded_s"] = screen.loaded_at - t0
        out["detail_events"] = screen.series.events
        await pilot.pause(0.3)
        out["rss_mb"] = peak_rss_mb()
        # responsiveness while a live run writes 50 events/s
        app.pop_screen()
        app.open_detail(__import__("pathlib").Path(runs_dir) / live)
        await pilot.pause(0.5)
        print("READY", flush=True)
        lags = []
        last = time.perf_counter()
        for _ in range(250):
            await asyncio.sleep(0.02)
            now = time.perf_counter()
            lags.append(now - last - 0.02)
            last = now
        out["max_lag_ms"] = max(lags) * 1000
        out["p99_lag_ms"] = sorted(lags)[int(len(lags) * 0.99)] * 1000
        out["live_events_seen"] = app.screen.series.events
asyncio.run(main())
print("RESULT " + json.dumps(out), flush=True)
"""

WRITER = r"""
import json, sys, time
path, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
step = 1000
end = time.time() + seconds
with open(path, "a") as f:
    while time.time() < end:
        step += 1
        f.write(json.dumps({"v": 1, "type": "step", "time": time.time(), "step": step, "loss": 0.5,
                            "lr": {"prompt": 0.1}, "samples_per_s": 40.0}) + "\n")
        f.flush()
        time.sleep(1 / rate)
"""


def build(runs_dir: Path, runs: int, lines: int) -> tuple[str, str]:
    from dtvg_engine.history import History
    from dtvg_tui.synthetic import make_scale_runs, stage1_config, training_events, write_run

    big = make_scale_runs(runs_dir, count=runs, big_lines=lines)
    config = stage1_config("rte", steps=1_000_000)
    live = "20250103-000000-stage1-rte-live"
    write_run(runs_dir, live, config, training_events(live, config, 1000, status=None, pid=os.getpid()))
    History(runs_dir).rebuild()
    return big.name, live


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--lines", type=int, default=100_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = Path(tmp) / "runs"
        t = time.perf_counter()
        big, live = build(runs_dir, args.runs, args.lines)
        build_s = time.perf_counter() - t
        lines = sum(1 for _ in open(runs_dir / big / "events.jsonl", "rb"))
        env = {**os.environ, "BENCH_T0": repr(time.time()), "TEXTUAL_ANIMATIONS": "none"}
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(runs_dir), big, live],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        writer = None
        result = None
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("READY"):
                writer = subprocess.Popen(
                    [sys.executable, "-c", WRITER, str(runs_dir / live / "events.jsonl"), "50", "6"]
                )
            elif line.startswith("RESULT "):
                result = json.loads(line[7:])
        child.wait()
        if writer is not None:
            writer.wait()
        if result is None:
            sys.exit(f"benchmark child failed:\n{child.stderr.read() if child.stderr else ''}")

    figures = {
        "runs": args.runs + 1,
        "big_run_lines": lines,
        "first_screen_s": round(result["first_screen_s"], 3),
        "full_scan_s": round(result["full_scan_s"], 3),
        "detail_shown_s": round(result["detail_shown_s"], 3),
        "detail_loaded_s": round(result["detail_loaded_s"], 3),
        "rss_mb": round(result["rss_mb"], 1),
        "live_50eps_max_lag_ms": round(result["max_lag_ms"], 1),
        "live_50eps_p99_lag_ms": round(result["p99_lag_ms"], 1),
        "targets_met": {
            "first_screen_lt_1s": result["first_screen_s"] < 1,
            "detail_lt_1s": result["detail_shown_s"] < 1,
            "rss_lt_250mb": result["rss_mb"] < 250,
        },
    }
    if not args.json:
        print(f"built {args.runs + 1} runs ({lines} lines in the big stage-2 run) in {build_s:.1f} s")
        print(
            f"first screen (process start → rows shown): {figures['first_screen_s']:.3f} s "
            f"({result['rows']} rows from the index; full rescan done at {figures['full_scan_s']:.2f} s)"
        )
        print(
            f"run detail: newest step ({result['detail_shown_step']}) on screen in "
            f"{figures['detail_shown_s']:.3f} s, "
            f"{result['detail_events']} events folded in {figures['detail_loaded_s']:.3f} s"
        )
        print(
            f"peak RSS: {result['rss_runs_mb']:.0f} MB with the Runs table, "
            f"{figures['rss_mb']:.0f} MB with the detail open"
        )
        print(
            f"while a run writes 50 events/s: max UI timer lag {figures['live_50eps_max_lag_ms']:.1f} ms, "
            f"p99 {figures['live_50eps_p99_lag_ms']:.1f} ms ({result['live_events_seen']} events followed)"
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
