"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Standard library only (and `safefiles`, which is too). Every file a run, a study or the source bank
replaces goes through `replacing` (the run folder, the Slurm job record, a study's record,
the bank's vectors).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dtvg_engine.runs.safefiles import check_output


@contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh temp file next to `path` for the caller to write; then it replaces `path` atomically.

    Readers see the old file or the new one, never half of one. The temp file gets the mode any new
    file gets (0666 less the umask, so a copied runs directory stays readable to others), its data is
    on disk before the rename (fsync) and the rename itself is, where the filesystem allows, too.
    On an error the temp file is removed and `path` is left as it was. A `path` that exists and is not
    a regular file (a device, a FIFO) is refused (`safefiles.check_output`).
    """
    path = Path(path)
    check_output(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    mode = tmp.stat().st_mode & 0o777  # 0666 less the umask, as the kernel applied it
    try:
        yield tmp
        os.chmod(tmp, mode)  # some writers (safetensors) replace the file with a 0600 one
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def new_file_mode(folder: str | os.PathLike[str]) -> int:
    """The mode a new file in `folder` gets (0666 less the umask), read off a probe file made there:
    for the files of a writer that makes its own 0600 ones (safetensors, peft), so a copied runs
    directory stays readable to others, as `replacing` gives every file it writes."""
    probe = Path(folder) / f".mode.{secrets.token_hex(4)}.tmp"
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        return probe.stat().st_mode & 0o777
    finally:
        probe.unlink()


def _fsync_dir(path: Path) -> None:
    """Make a rename in folder `path` durable; skipped where the filesystem cannot."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) to `path` through `replacing`."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented JSON to `path` through `replacing`."""
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")
