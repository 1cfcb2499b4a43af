"""Opening the files of a runs directory as data a stranger may have made.

A runs directory may come from someone else, so no file in it is trusted to be what its name says. A
symbolic link would send a write, an append or a truncating lock to a file outside the runs directory;
a device (/dev/zero) or a FIFO would make a read endless or hang it; JSON nested 100,000 levels deep
would overflow the parser. So every file the tools open inside a runs directory is opened here:

- without following a link at its end (O_NOFOLLOW) and without waiting on a FIFO (O_NONBLOCK), and the
  opened descriptor must be a regular file (fstat); a folder the tools write into must be a real one;
- a whole-file read stops at a cap (`JSON_LIMIT`), far above anything the tools write;
- JSON nested too deeply is bad JSON (a `ValueError`), not a `RecursionError`.

Anything else is refused with `FileRefused`: a `UserError` (the CLI prints it as one line) that is also
an `OSError`, so a reader that passes over an unreadable file (a missing note, a log tail) passes over
this one too. Libraries that open files by name (safetensors, peft) get a path checked just before.
The TOML files a user names (task and study files, `tasks.read_toml`) are read the same way, except
that a link to a regular file is followed (`follow`).
Standard library only: the terminal UI imports it.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import IO, Any

from dtvg_engine.errors import UserError

JSON_LIMIT = 64 << 20
"""The most bytes read of one JSON file (config, meta, history index, records): 64 MiB, some 15 times a
history index of 5,000 runs."""
PID_LIMIT = 64
"""The most bytes read of a pid file."""

_OPEN_FLAGS = {"r": os.O_RDONLY, "a": os.O_WRONLY | os.O_APPEND | os.O_CREAT}


class FileRefused(UserError, OSError):
    """A file of a runs directory that is not what the tools may open: a link, a device, a FIFO, a
    folder in a file's place (or the reverse), or a file too big to read. Its message is its `strerror`
    too, for callers that word an `OSError` as "cannot write X: <strerror>"."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EINVAL, message)

    def __str__(self) -> str:
        return str(self.strerror)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a regular file"


_INSIDE = "; the tools open only regular files and folders inside a runs directory (move it away)"


def _refused(
    path: str | os.PathLike[str], mode: int, wanted: str = "a regular file", follow: bool = False
) -> FileRefused:
    """`path` is not what may be opened; `follow`: a file a user named, not one of a runs directory."""
    return FileRefused(f"{path} is {_kind(mode)}, not {wanted}{'' if follow else _INSIDE}")


def open_fd(
    path: str | os.PathLike[str], flags: int = os.O_RDONLY, mode: int = 0o666, follow: bool = False
) -> int:
    """A descriptor of the regular file `path` (created when `flags` say so); `FileRefused` for a link
    at its end, a device, a FIFO, a socket or a folder. Nothing but a regular file is ever opened.

    `follow`: for a file a user names (a task or study file), where a link to a regular file is fine.
    """
    if not follow:
        try:
            found = os.lstat(path)
        except FileNotFoundError:
            pass  # O_CREAT makes it below, or os.open says it is missing
        else:
            if not stat.S_ISREG(found.st_mode):
                raise _refused(path, found.st_mode)
    try:
        fd = os.open(path, flags | (0 if follow else os.O_NOFOLLOW) | os.O_NONBLOCK, mode)
    except OSError as e:
        if e.errno == errno.ELOOP and not follow:  # a link swapped in after the lstat
            raise _refused(path, stat.S_IFLNK) from None
        raise
    opened = os.fstat(fd).st_mode
    if not stat.S_ISREG(opened):  # swapped in after the lstat, or what a followed link names
        os.close(fd)
        raise _refused(path, opened, follow=follow)
    return fd


def open_file(path: str | os.PathLike[str], mode: str = "rb", encoding: str | None = None) -> IO[Any]:
    """`open(path, mode)` for a regular file only (see `open_fd`); `mode` reads ("r") or appends ("a")."""
    return os.fdopen(open_fd(path, _OPEN_FLAGS[mode[0]]), mode, encoding=encoding)


def read_bytes(path: str | os.PathLike[str], limit: int = JSON_LIMIT, follow: bool = False) -> bytes:
    """The bytes of the regular file `path` (see `open_fd`, `follow`); `FileRefused` when it holds more
    than `limit`."""
    with os.fdopen(open_fd(path, follow=follow), "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        written = "" if follow else ", more than the tools ever write there"
        raise FileRefused(f"{path} is larger than {limit} bytes{written}")
    return data


def parse_json(data: str | bytes) -> Any:
    """`json.loads`, with JSON nested too deeply for the parser a `ValueError` like any other bad JSON."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def read_json(path: str | os.PathLike[str], limit: int = JSON_LIMIT) -> Any:
    """The JSON value of the regular file `path` (see `read_bytes`, `parse_json`)."""
    return parse_json(read_bytes(path, limit))


def regular_file(path: str | os.PathLike[str]) -> Path:
    """`path`, once checked to be a regular file (not a link), for a library that opens it by name."""
    os.close(open_fd(path))
    return Path(path)


def real_dir(path: str | os.PathLike[str]) -> bool:
    """Whether the folder `path` exists (False when nothing is there); `FileRefused` when a link or
    anything but a folder is in its place."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(found.st_mode):
        raise _refused(path, found.st_mode, "a folder")
    return True


def make_dir(path: str | os.PathLike[str]) -> Path:
    """The real folder `path`, created when missing (its parent must exist); `FileRefused` as `real_dir`."""
    try:
        os.mkdir(path)
    except FileExistsError:
        real_dir(path)
    return Path(path)


def check_output(path: str | os.PathLike[str]) -> None:
    """Refuse to replace `path` when it exists and is not a regular file (a device, a FIFO, a folder):
    writing a new file in its place would swap, say, /dev/null for a regular file."""
    try:
        found = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    if not stat.S_ISREG(found.st_mode):
        raise FileRefused(
            f"{path} exists and is {_kind(found.st_mode)}, not a regular file; remove it or write elsewhere"
        )
