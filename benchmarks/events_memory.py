"""Memory and time of folding a long events file: `python benchmarks/events_memory.py [--mb N] [--json]`.

Writes one stage-2 run whose events.jsonl is about N MB (default 285, the file of issue 24: `runs list`
then peaked at 1.39 GB), then, each in a fresh process so that its peak is its own, folds it:

- ours: `runstatus.summarize`, what `dtvg runs list` does for each run (the file read a chunk at a time,
  `events.READ_CHUNK_BYTES`, only the lines the fold needs parsed);
- reference: the same fold over the whole file read and parsed at once (how summaries read it before).

Prints each one's peak RSS above the process's RSS before the fold, and its seconds, as ratios: peak over
the file's size, and the reference's over ours. Its numbers are made up; only the sizes matter. Do not
read figures off a loaded machine. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
from pathlib import Path
from dtvg_engine.runs import events, runfolder, runstatus

def rss_mb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise SystemExit("needs /proc/self/status (Linux)")

run_dir, how = Path(sys.argv[1]), sys.argv[2]
before = rss_mb("VmRSS")
t0 = time.perf_counter()
if how == "ours":
    summary = runstatus.summarize(run_dir)
    steps, best = summary.step, summary.best_metric
else:
    state = events.RunState()
    state.feed(events.parse_lines((run_dir / runfolder.EVENTS).read_bytes().split(b"\n"))[0])
    steps, best = state.step, state.best_metric
seconds = time.perf_counter() - t0
print("RESULT " + json.dumps({"peak_mb": rss_mb("VmHWM") - before, "seconds": seconds, "steps": steps,
                              "best": best}))
"""


def write_run(run_dir: Path, megabytes: float) -> int:
    """A stage-2 run of step and group events (an eval every 1,000 steps) of about `megabytes`; its steps."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from synthetic_runs import stage2_config

    sources = ["mnli", "qnli", "qqp", "sst2", "stsb", "mrpc"]
    config = stage2_config("rte", sources, steps=0)
    run_dir.mkdir(parents=True)
    target = megabytes * (1 << 20)
    step = 0
    with open(run_dir / "events.jsonl", "w", encoding="utf-8") as f:

        def emit(type: str, **fields: object) -> None:
            f.write(json.dumps({"v": 1, "type": type, "time": 1e9 + step, **fields}, separators=(",", ":")))
            f.write("\n")

        emit("run_started", run_id=run_dir.name, stage="stage2", method="dtvg", pid=None, config=config,
             target="rte")  # fmt: skip
        ranked = [{"task": s, "sim": round(0.1 * i, 4)} for i, s in enumerate(sources)]
        while f.tell() < target:
            step += 1
            emit("step", step=step, loss=0.5, lr={"prompt": 0.3, "scales": 0.4}, samples_per_s=40.0)
            emit("group", step=step, ranked=ranked, selected=sources[:2], ts=0.5, kc=0.3,
                 scales={s: 1.0 for s in sources[:2]})  # fmt: skip
            if step % 1000 == 0:
                emit("eval", step=step, split="validation", metrics={"accuracy": 0.5}, primary=0.5, best=True)
        emit("run_finished", status="completed", summary={}, error=None)
    config["steps"] = step
    (run_dir / "config.json").write_text(json.dumps({"run_id": run_dir.name, **config}))
    return step


def measure(run_dir: Path, how: str) -> dict:
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(run_dir), how],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )
    result = next((json.loads(s[7:]) for s in child.stdout.splitlines() if s.startswith("RESULT ")), None)
    if result is None:
        sys.exit(f"{how} failed:\n{child.stderr}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=285.0, help="size of the events file (default 285)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "20250101-000000-stage2-rte-dtvg-long"
        steps = write_run(run_dir, args.mb)
        file_mb = (run_dir / "events.jsonl").stat().st_size / (1 << 20)
        ours, reference = measure(run_dir, "ours"), measure(run_dir, "reference")
    assert ours["steps"] == reference["steps"] == steps and ours["best"] == reference["best"]
    figures = {
        "file_mb": round(file_mb, 1),
        "ours_peak_over_file": round(ours["peak_mb"] / file_mb, 3),
        "reference_peak_over_file": round(reference["peak_mb"] / file_mb, 3),
        "reference_peak_over_ours": round(reference["peak_mb"] / max(ours["peak_mb"], 1.0), 1),
        "reference_s_over_ours": round(reference["seconds"] / ours["seconds"], 1),
        "load_average": os.getloadavg()[0],  # other load on the machine skews the times
    }
    if not args.json:
        print(f"{file_mb:.0f} MB events file, {steps} steps")
        print(
            f"peak memory over the file's size: ours {figures['ours_peak_over_file']}, "
            f"reference (whole file at once) {figures['reference_peak_over_file']}; "
            f"the reference's peak is {figures['reference_peak_over_ours']} x ours (counted as >= 1 MB)"
        )
        print(f"time: the reference takes {figures['reference_s_over_ours']} x ours")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
