"""Output locks: one writer per output (a streamed scan's table, a run folder).

A lock is a small file ``<output>.lock`` (for a folder: ``<folder>/.memlens.lock``) created with
``O_EXCL`` and holding the owner's pid, host and start time. A second writer is refused while
the owner lives; a lock left by a process that died (same host, pid gone) is taken over with a
warning. A lock from another host cannot be checked and is refused: the message says which
file to delete if that process is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

from memlens.core.errors import InputError


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    except OSError:
        return False
    return True


def _owner() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


def read_lock(path: Path) -> dict[str, Any] | None:
    """The owner a lock file names (None if the file is absent or unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _stale(owner: dict[str, Any] | None) -> bool:
    """A lock whose owner is known dead: same host, pid gone (an unreadable lock is a torn write
    of a writer killed while it locked, so stale too)."""
    if owner is None:
        return True
    pid = owner.get("pid")
    return owner.get("host") == socket.gethostname() and isinstance(pid, int) and not _alive(pid)


def acquire(path: Path, what: str) -> None:
    """Create the lock file ``path`` for this process, taking over a stale one; an
    :class:`InputError` naming the owner if another live process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = read_lock(path)
            if owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
                raise InputError(f"{what} is already being written by this process (lock {path})") from None
            if not _stale(owner):
                raise InputError(
                    f"{what} is being written by another process (pid {owner.get('pid')} on {owner.get('host')}, "  # type: ignore[union-attr]
                    f"since {owner.get('started')}); wait for it to finish, or if that process is gone, delete "  # type: ignore[union-attr]
                    f"{path} and run again") from None
            warnings.warn(f"taking over the lock {path} left by a process that is gone "
                          f"({'pid ' + str(owner.get('pid')) if owner else 'unreadable lock'})", stacklevel=3)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(_owner()))
        return
    raise InputError(f"could not lock {what} ({path}): other processes keep taking it; run one writer at a time")


def release(path: Path) -> None:
    """Remove the lock file ``path`` if this process owns it."""
    owner = read_lock(path)
    if owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def locked(path: str | os.PathLike[str], what: str) -> Iterator[Path]:
    """Hold the lock file ``path`` (see :func:`acquire`) for the block; released on exit,
    also after an error or an interrupt."""
    lock = Path(path)
    acquire(lock, what)
    try:
        yield lock
    finally:
        release(lock)


def file_lock_path(output: Path) -> Path:
    """The lock of an output file: ``<output>.lock`` beside it."""
    return output.with_name(output.name + ".lock")


def folder_lock_path(folder: Path) -> Path:
    """The lock of an output folder: ``<folder>/.memlens.lock``."""
    return folder / ".memlens.lock"
