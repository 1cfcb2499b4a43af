"""The run folder (DESIGN §3): creating runs, finding them and summarizing what their files say.

A run folder is the source of truth for one run; everything here derives from its files. Standard
library only, because the terminal UI imports it and must start in well under a second.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from dtvg_engine.errors import UserError
from dtvg_engine.events import TERMINAL_STATUSES, read_events

CONFIG = "config.json"
EVENTS = "events.jsonl"
LOG = "worker.log"
PROMPT = "prompt.safetensors"
TPV = "tpv.safetensors"
ADAPTER = "adapter"
CHECKPOINT = "checkpoint"
META = "meta.json"
"""User annotations (tags, note): kept in the run folder so the history stays derivable."""
PIDFILE = "worker.pid"
"""The launched worker's pid, written by the launcher so a run can be stopped before its first event."""
INITS_DIR = "_inits"
"""Shared initializations, `runs/_inits/<model-slug>-r<length>-s<seed>.safetensors`."""

STATUSES = ("pending", "running", "completed", "failed", "stopped", "killed")
"""Every status `summarize` reports: the three `run_finished` statuses plus three derived ones."""

_LOG_TAIL_BYTES = 256 * 1024


def default_runs_dir() -> Path:
    """`$DTVG_RUNS_DIR`, else `./runs`."""
    return Path(os.environ.get("DTVG_RUNS_DIR") or "runs")


def _safe(text: str) -> str:
    """Lowercase `text` and replace every run of characters outside [a-z0-9._-] by one "-"."""
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-") or "run"


def new_run_id(stage: str, label: str, now: datetime | None = None) -> str:
    """`<YYYYmmdd-HHMMSS>-<stage>-<label>`, filesystem-safe."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{_safe(stage)}-{_safe(label)}"


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as JSON through a temp file in the same folder and `os.replace`.

    Readers see either the old file or the new one, never a half-written one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_run(runs_dir: str | os.PathLike[str], stage: str, label: str, config: dict[str, Any]) -> Path:
    """Create a new run folder holding `config` (plus its `run_id`) as config.json; return its path.

    The folder is created exclusively: when the id is taken (two runs in the same second), "-2", "-3", …
    is appended. The caller's dict is not modified; read the id back from the folder name.
    """
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    base = new_run_id(stage, label)
    run_id, n = base, 1
    while True:
        run_dir = runs_dir / run_id
        try:
            run_dir.mkdir()
            break
        except FileExistsError:
            n += 1
            run_id = f"{base}-{n}"
    resolved = {"run_id": run_id, **{k: v for k, v in config.items() if k != "run_id"}}
    write_json_atomic(run_dir / CONFIG, resolved)
    return run_dir


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The run's config.json; `UserError` when it is missing or unreadable."""
    path = Path(run_dir) / CONFIG
    try:
        config = _read_json(path)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} ({e.__class__.__name__}); is this a run folder?") from e
    if not isinstance(config, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return config


def list_run_dirs(runs_dir: str | os.PathLike[str]) -> list[Path]:
    """Run folders (those holding a config.json) sorted by name, i.e. by start time.

    Names starting with "_" or "." (shared inits, temp folders) are not runs.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    return sorted(p for p in runs_dir.iterdir() if p.name[:1] not in ("_", ".") and (p / CONFIG).is_file())


def find_run(runs_dir: str | os.PathLike[str], ref: str) -> Path:
    """The run folder `ref` names: an exact id, else the one id containing `ref` (e.g. a short suffix).

    A path to a run folder is accepted too. `UserError` when no run or several runs match.
    """
    runs_dir = Path(runs_dir)
    exact = runs_dir / ref
    if ref and (exact / CONFIG).is_file():
        return exact
    if ref and (Path(ref) / CONFIG).is_file():
        return Path(ref)
    matches = [p for p in list_run_dirs(runs_dir) if ref and ref in p.name]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UserError(f"no run matching {ref!r} in {runs_dir}/; see `dtvg runs list`")
    names = ", ".join(p.name for p in matches[:5]) + (", …" if len(matches) > 5 else "")
    raise UserError(f"{ref!r} matches {len(matches)} runs: {names}; give more of the id")


def pid_alive(pid: int | None) -> bool:
    """Whether process `pid` exists and is not a zombie (an exited child nobody has reaped yet)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, but belongs to another user
    except OSError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS) or it exited just now; os.kill said it was there
    fields = stat.rpartition(")")[2].split()  # the state follows the command name, which may hold ")"
    return not fields or fields[0] != "Z"


def read_pid(run_dir: str | os.PathLike[str]) -> int | None:
    """The pid in the run's worker.pid, or None when there is no (readable) pidfile."""
    try:
        return int((Path(run_dir) / PIDFILE).read_text().strip())
    except (OSError, ValueError):
        return None


def read_meta(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The run's user annotations `{"tags": [...], "note": "..."}`; empty ones when there is no meta.json."""
    try:
        meta = _read_json(Path(run_dir) / META)
    except (OSError, ValueError):
        meta = {}
    if not isinstance(meta, dict):
        meta = {}
    tags = meta.get("tags")
    note = meta.get("note")
    return {
        "tags": [str(t) for t in tags] if isinstance(tags, list) else [],
        "note": note if isinstance(note, str) else "",
    }


def update_meta(
    run_dir: str | os.PathLike[str], tags: list[str] | None = None, note: str | None = None
) -> dict[str, Any]:
    """Replace the run's tags and/or note (None leaves one as it is); return the new annotations."""
    meta = read_meta(run_dir)
    if tags is not None:
        meta["tags"] = list(dict.fromkeys(str(t) for t in tags))
    if note is not None:
        meta["note"] = note
    write_json_atomic(Path(run_dir) / META, meta)
    return meta


def tail_log(run_dir: str | os.PathLike[str], lines: int = 20) -> list[str]:
    """The last `lines` lines of worker.log (from its last 256 KiB), e.g. to show why a run failed."""
    try:
        with open(Path(run_dir) / LOG, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _LOG_TAIL_BYTES))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:] if lines > 0 else []


@dataclass
class RunSummary:
    """One run at a glance: what the history index stores and listings show."""

    run_id: str
    """The run folder's name (config.json's `run_id` too, unless the folder was renamed or copied)."""
    stage: str
    """"stage1" or "stage2"."""
    method: str
    """Stage 2 method (`dtvg`, `spot`, …); "pt" for stage 1."""
    task: str
    """The task tuned in stage 1, or the target task of stage 2."""
    model: str
    """Backbone id or path."""
    status: str
    """One of `STATUSES`; see `derive_status`."""
    best_metric: float | None = None
    """`primary` of the last eval marked best."""
    metric_name: str | None = None
    """Name of the primary metric, from config "primary_metric" when present."""
    step: int = 0
    """Last training step seen in the events."""
    total_steps: int | None = None
    """Planned steps, from config "steps"."""
    started: float | None = None
    """Unix time of the first `run_started`."""
    ended: float | None = None
    """Unix time of the last `run_finished`, when the run is finished."""
    duration: float | None = None
    """Seconds spent running, summed over resumed segments (an unfinished one up to its last event)."""
    pid: int | None = None
    """Worker pid: from the last `run_started`, else (and while pending) from worker.pid."""
    error: str | None = None
    """The error of the last `run_finished`, when the run is finished."""
    tags: list[str] = field(default_factory=list)
    """User tags, from meta.json."""
    note: str = ""
    """User note, from meta.json."""
    run_dir: str = ""
    """Path of the run folder."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def derive_status(events: list[dict[str, Any]], launched_pid: int | None, launched_at: float | None) -> str:
    """The run's status from its lifecycle events and its pidfile (pid and mtime, None when absent).

    - the last lifecycle event is `run_finished`: its status;
    - the last one is `run_started`: "running" while its pid (else the pidfile's) is alive, else "killed";
    - no lifecycle event yet: "pending" while the launched pid is alive or no pid was recorded (a
      foreground run about to start), "killed" once the launched worker died without a word.
    A newer launch (pidfile written after the last lifecycle event by another, still living pid) is
    "pending" whatever came before: a resumed run whose worker is still loading.
    """
    lifecycle = [e for e in events if e["type"] in ("run_started", "run_finished")]
    starts = [e for e in lifecycle if e["type"] == "run_started"]
    if not lifecycle:
        return "killed" if launched_pid is not None and not pid_alive(launched_pid) else "pending"
    last = lifecycle[-1]
    relaunched = (
        launched_at is not None
        and launched_at > last["time"]
        and (not starts or starts[-1].get("pid") != launched_pid)
        and pid_alive(launched_pid)
    )
    if relaunched:
        return "pending"
    if last["type"] == "run_finished":
        return str(last.get("status") or "failed")
    return "running" if pid_alive(last.get("pid") or launched_pid) else "killed"


def _duration(events: list[dict[str, Any]]) -> float | None:
    """Seconds from each `run_started` to the `run_finished` (else the last event) that ends its segment."""
    total: float | None = None
    start: float | None = None
    last_time = 0.0
    for event in events:
        if event["type"] == "run_started":
            if start is not None:  # the previous segment died without finishing
                total = (total or 0.0) + last_time - start
            start = event["time"]
        elif event["type"] == "run_finished" and start is not None:
            total = (total or 0.0) + event["time"] - start
            start = None
        last_time = event["time"]
    if start is not None:
        total = (total or 0.0) + last_time - start
    return total


def summarize(run_dir: str | os.PathLike[str]) -> RunSummary:
    """Summarize a run from its config.json, meta.json, events.jsonl and worker.pid."""
    run_dir = Path(run_dir)
    events, _ = read_events(run_dir / EVENTS)
    steps = [e for e in events if e["type"] == "step"]
    bests = [e for e in events if e["type"] == "eval" and e.get("best")]
    best = bests[-1].get("primary") if bests else None
    return build_summary(
        run_dir,
        read_config(run_dir),
        read_meta(run_dir),
        lifecycle=[e for e in events if e["type"] in ("run_started", "run_finished")],
        step=int(steps[-1].get("step", 0)) if steps else 0,
        best=float(best) if isinstance(best, (int, float)) else None,
        duration=_duration(events),
    )


def build_summary(
    run_dir: Path,
    config: dict[str, Any],
    meta: dict[str, Any],
    lifecycle: list[dict[str, Any]],
    step: int,
    best: float | None,
    duration: float | None,
) -> RunSummary:
    """A run's summary from what its events say (the dashboard folds them incrementally, `summarize`
    reads them whole) plus its config, meta and pidfile."""
    launched_pid = read_pid(run_dir)
    try:
        launched_at = (run_dir / PIDFILE).stat().st_mtime if launched_pid is not None else None
    except OSError:
        launched_at = None
    starts = [e for e in lifecycle if e["type"] == "run_started"]
    first_start = starts[0] if starts else {}
    last_start = starts[-1] if starts else {}
    status = derive_status(lifecycle, launched_pid, launched_at)
    finish = lifecycle[-1] if status in TERMINAL_STATUSES else None
    stage = str(config.get("stage") or first_start.get("stage") or "")
    task_key = "target" if stage == "stage2" else "task"
    total_steps = config.get("steps")
    return RunSummary(
        run_id=run_dir.name,
        stage=stage,
        method=str(config.get("method") or first_start.get("method") or ("pt" if stage == "stage1" else "")),
        task=str(config.get(task_key) or first_start.get(task_key) or ""),
        model=str(config.get("model") or ""),
        status=status,
        best_metric=best,
        metric_name=config.get("primary_metric"),
        step=step,
        total_steps=int(total_steps) if isinstance(total_steps, (int, float)) else None,
        started=first_start.get("time"),
        ended=finish["time"] if finish else None,
        duration=duration,
        pid=launched_pid if status == "pending" else last_start.get("pid") or launched_pid,
        error=finish.get("error") if finish else None,
        tags=meta.get("tags", []),
        note=meta.get("note", ""),
        run_dir=str(run_dir),
    )
