"""The run folder: its files and their names, creating runs, finding them, reading their config.

The contract: docs/architecture.md, 'Run folder'.

A run folder is the source of truth for one run; everything here derives from its files. Who owns a
run is in `runowner`, its tags and note in `runmeta`, its status and summary in `runstatus`, what may
be done to it in `runactions`. Standard library only, because the terminal UI imports it and must
start in well under a second.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from dtvg_engine.errors import UserError
from dtvg_engine.runs.atomic import write_json_atomic
from dtvg_engine.runs.safefiles import FileRefused, open_file, parse_json, read_json, real_dir

CONFIG = "config.json"
EVENTS = "events.jsonl"
LOG = "worker.log"
PROMPT = "prompt.safetensors"
TPV = "tpv.safetensors"
PREDICTIONS = "predictions.jsonl"
"""A generation run's generated texts: the latest validation generations while the run trains, the test
generations at the chosen checkpoint once it has finished."""
ADAPTER = "adapter"
CHECKPOINT = "checkpoint"
CHECKPOINT_FILE = "state.safetensors"
"""The resume state inside CHECKPOINT: tensors, plus the rest as JSON in the header (`training`)."""
OLD_CHECKPOINT_FILE = "state.pt"
"""The pickled checkpoint of versions before 0.2: never loaded, since unpickling can run any code."""
CHECKPOINT_FORMAT = "dtvg-checkpoint-1"
"""The `format` a checkpoint's header metadata names; anything else is refused."""
META = "meta.json"
"""User annotations (tags, note): kept in the run folder so the history stays derivable."""
META_LOCK = "meta.json.lock"
"""Held (flock) around every read-modify-write of meta.json, so parallel tag/note commands lose nothing."""
PIDFILE = "worker.pid"
"""The launched worker's pid, written by the launcher so a run can be stopped before its first event."""
WORKER_LOCK = "worker.lock"
"""Held (flock) by the run's worker for its whole life, from launch on; holds its pid. One worker per run."""
EXIT = "worker.exit"
"""How the last worker that someone waited for ended: its pid and exit status (`record_exit`)."""
RESERVE = "worker.reserve"
"""Disk space a worker holds while it runs (`reserve_space`), freed to record its end on a full disk."""
INITS_DIR = "_inits"
"""Shared initializations, `runs/_inits/<model-slug>-r<length>-s<seed>.safetensors`."""

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


def create_run(runs_dir: str | os.PathLike[str], stage: str, label: str, config: dict[str, Any]) -> Path:
    """Create a new run folder holding `config` (plus its `run_id`) as config.json; return its path.

    The folder is created exclusively: when the id is taken (two runs in the same second), "-2", "-3", …
    is appended. The caller's dict is not modified; read the id back from the folder name.
    """
    runs_dir = Path(runs_dir)
    base = new_run_id(stage, label)
    run_id, n = base, 1
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        while True:
            run_dir = runs_dir / run_id
            try:
                run_dir.mkdir()
                break
            except FileExistsError:
                n += 1
                run_id = f"{base}-{n}"
    except OSError as e:
        raise UserError(f"cannot create a run in {runs_dir}/: {e.strerror}") from e
    resolved = {"run_id": run_id, **{k: v for k, v in config.items() if k != "run_id"}}
    try:
        write_json_atomic(run_dir / CONFIG, resolved)
    except OSError as e:  # a disk found full: no folder without a config is left, which no command finds
        shutil.rmtree(run_dir, ignore_errors=True)
        raise UserError(
            f"cannot create run {run_id} in {runs_dir}/: {e.strerror}; free some space and try again"
        ) from e
    return run_dir


def create_runs(
    runs_dir: str | os.PathLike[str], stage: str, planned: Sequence[tuple[str, dict[str, Any]]]
) -> list[Path]:
    """`create_run` for each (label, config) of `planned`: all of them or, on an error (a full disk),
    none, so a command that fails leaves no half of what it asked for."""
    made: list[Path] = []
    try:
        for label, config in planned:
            made.append(create_run(runs_dir, stage, label, config))
    except BaseException:
        for run_dir in made:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return made


def read_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The run's config.json; `UserError` when it is missing, unreadable or not a regular file."""
    path = Path(run_dir) / CONFIG
    try:
        config = read_json(path)
    except FileRefused:
        raise
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror}); is this a run folder?") from e
    except ValueError as e:  # not JSON, not UTF-8, nested too deeply
        raise UserError(f"cannot read {path} ({e}); is this a run folder?") from e
    if not isinstance(config, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return config


def list_run_dirs(runs_dir: str | os.PathLike[str]) -> list[Path]:
    """Run folders (real folders holding a config.json) sorted by name, i.e. by start time.

    Names starting with "_" or "." (shared inits, temp folders) are not runs, and neither are symbolic
    links: a run folder lives inside its runs directory (`find_run`).
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    return sorted(p for p in runs_dir.iterdir() if _is_run_name(p.name) and _is_run_dir(p))


def _is_run_name(name: str) -> bool:
    return name not in ("", ".", "..") and name[:1] not in ("_", ".")


def _is_run_dir(path: Path) -> bool:
    """A real folder holding a config.json (of any kind: one that cannot be read is a damaged run)."""
    return not path.is_symlink() and os.path.lexists(path / CONFIG)


def find_run(runs_dir: str | os.PathLike[str], ref: str) -> Path:
    """The run folder `ref` names inside `runs_dir`: an exact id, else the one id containing `ref`.

    A path is accepted when it names a folder directly inside `runs_dir` (as tab completion gives
    `runs/<id>/`). Anything else is refused with a `UserError`: a path elsewhere, "..", a symbolic link
    (its target may be anywhere; `dtvg runs rm` removes the link alone, see `find_link`), no run or
    several runs matching.
    """
    root = Path(runs_dir)
    name = _name_inside(root, ref)
    exact = root / name
    if exact.is_symlink():
        raise UserError(
            f"{exact} is a symbolic link to {os.readlink(exact)}; runs are real folders inside {root}/ "
            f"(`dtvg runs rm {name}` removes the link alone)"
        )
    if _is_run_name(name) and _is_run_dir(exact):
        return exact
    matches = [p for p in list_run_dirs(root) if name == ref and ref in p.name]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UserError(f"no run matching {ref!r} in {root}/; see `dtvg runs list`")
    names = ", ".join(p.name for p in matches[:5]) + (", …" if len(matches) > 5 else "")
    raise UserError(f"{ref!r} matches {len(matches)} runs: {names}; give more of the id")


def missing_stage1_runs(runs_dir: str | os.PathLike[str], config: dict[str, Any]) -> dict[str, str]:
    """Task → id of each stage-1 run a stage-2 run's `config` transfers from (its `stage1_runs`) that
    the runs directory no longer holds (removed, or never copied along)."""
    named = config.get("stage1_runs")
    if not isinstance(named, dict):
        return {}
    return {
        str(task): str(run_id)
        for task, run_id in named.items()
        if not (_is_run_name(str(run_id)) and _is_run_dir(Path(runs_dir) / str(run_id)))
    }


def stage1_dependents(runs_dir: str | os.PathLike[str], run_id: str) -> list[str]:
    """The runs that transfer from the stage-1 run `run_id` (name it in their `stage1_runs`)."""
    found = []
    for run_dir in list_run_dirs(runs_dir):
        try:
            named = read_config(run_dir).get("stage1_runs")
        except UserError:
            continue  # a damaged folder depends on nothing anyone can use
        if isinstance(named, dict) and run_id in named.values():
            found.append(run_dir.name)
    return found


def find_link(runs_dir: str | os.PathLike[str], ref: str) -> Path | None:
    """The symbolic link `ref` names directly inside `runs_dir`, or None when it names no link."""
    link = Path(runs_dir) / _name_inside(Path(runs_dir), ref)
    return link if link.is_symlink() else None


def _name_inside(root: Path, ref: str) -> str:
    """The name of the entry of `root` that `ref` (a name, or a path) names; `UserError` for any other.

    A path must resolve (its folder, symbolic links followed) to `root` itself: "../x", "/elsewhere/x",
    "..", "." and "runs/x/../y" name nothing inside the runs directory.
    """
    path = Path(ref)
    if not ref.strip() or path.name in ("", ".", ".."):
        raise UserError(f"{ref!r} is not a run id; see `dtvg runs list`")
    if path.name == ref:
        return ref
    if os.path.realpath(path.parent) != os.path.realpath(root) or ".." in path.parts:
        raise UserError(
            f"{ref} is not inside the runs directory {root}/; give a run id from `dtvg runs list`"
        )
    return path.name


def checkpoint_path(run_dir: str | os.PathLike[str]) -> Path | None:
    """The run's resume checkpoint after a check of its framing, or None when the run has none.

    `UserError` naming the file and the way out when it cannot be loaded: truncated, not a checkpoint
    of this format, or an old pickled one (never unpickled: a run folder may come from anyone).
    The check reads the safetensors header only; the tensors themselves are read by `training`.
    """
    folder = Path(run_dir) / CHECKPOINT
    path = folder / CHECKPOINT_FILE
    restart = f"delete {folder} to resume from step 0 (the steps done so far are trained again)"
    if not real_dir(folder):
        return None
    if not os.path.lexists(path):
        if (folder / OLD_CHECKPOINT_FILE).exists():
            raise UserError(
                f"{folder / OLD_CHECKPOINT_FILE} is an older version's pickled checkpoint, which is never "
                f"loaded (unpickling can run code); {restart}"
            )
        return None
    problem = _checkpoint_problem(path)
    if problem:
        raise UserError(f"checkpoint {path} {problem}; {restart}")
    return path


def _checkpoint_problem(path: Path) -> str | None:
    """What is wrong with the framing of a safetensors checkpoint file, or None."""
    try:
        with open_file(path) as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 < length <= size - 8:
                return f"is not a checkpoint (a {size}-byte file without a safetensors header)"
            header = parse_json(f.read(length))
    except FileRefused:
        raise
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    except ValueError:
        return "has a damaged header"
    try:
        meta = header["__metadata__"]
        ends = [int(t["data_offsets"][1]) for key, t in header.items() if key != "__metadata__"]
    except (TypeError, KeyError, IndexError, ValueError):
        return "has a damaged header"
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        return f"is not a checkpoint of format {CHECKPOINT_FORMAT}"
    needed = 8 + length + max(ends, default=0)
    if size < needed:
        return f"is truncated ({size} of {needed} bytes)"
    return None


def tail_log(run_dir: str | os.PathLike[str], lines: int = 20, name: str = LOG) -> list[str]:
    """The last `lines` lines of worker.log (or another log there, `name`; from its last 256 KiB), e.g.
    to show why a run failed."""
    try:
        with open_file(Path(run_dir) / name) as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _LOG_TAIL_BYTES))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:] if lines > 0 else []
