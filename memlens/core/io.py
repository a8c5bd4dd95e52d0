"""Atomic file output: a reader never sees a half-written file."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from memlens.core.errors import InputError

_UMASK = os.umask(0)  # read once at import: os.umask can only be read by setting it
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK
TEMPORARY_GLOB = ".*.tmp"  # what atomic_path leaves behind when its process is killed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    target = Path(path)
    if target.is_dir():
        raise InputError(f"{target} is a directory; the file cannot be written there (remove the directory or choose "
                         "another path)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, FILE_MODE)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def cache_root() -> Path:
    """Where memlens caches what it builds or converts: ``$MEMLENS_CACHE``, else
    ``$XDG_CACHE_HOME/memlens``, else ``~/.cache/memlens``."""
    if os.environ.get("MEMLENS_CACHE"):
        return Path(os.environ["MEMLENS_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "memlens"


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def share_permissions(folder: str | os.PathLike[str]) -> None:
    """Give ``folder`` and everything under it the permissions of a file made with the umask
    (temporary folders are 0700 and some writers make 0600 files, which other users of a shared
    cache could not read)."""
    root = Path(folder)
    os.chmod(root, DIR_MODE)
    for path in root.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, DIR_MODE if path.is_dir() else FILE_MODE)


def remove_stray_temporaries(folder: str | os.PathLike[str], name: str | None = None) -> list[Path]:
    """Delete the temporary files that a killed :func:`atomic_path` left in ``folder`` (only
    those of the file ``name``, if given); return them."""
    pattern = f".{glob.escape(name)}.*.tmp" if name else TEMPORARY_GLOB
    stray = [p for p in Path(folder).glob(pattern) if p.is_file()]
    for p in stray:
        p.unlink(missing_ok=True)
    return stray


def check_output_file(path: str | os.PathLike[str], what: str = "output file") -> Path:
    """Make sure the file ``path`` can be written before any work is done (nothing is created):
    it is not a folder, and its folder exists or can be created. Raises :class:`InputError`
    saying why not."""
    target = Path(path)
    if target.is_dir():
        raise InputError(f"{what} {target} is a folder; give a file path (e.g. {target / 'scan.safetensors'})")
    check_output_folder(target.parent, f"the folder of the {what} {target}")
    return target


def check_output_folder(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Make sure the folder ``path`` exists or can be created, and can be written, before any
    work is done (nothing is created). Raises :class:`InputError` saying why not."""
    target = Path(path).absolute()
    if target.exists() and not target.is_dir():
        raise InputError(f"{what} {path} is a file, not a folder; choose another path")
    ancestor = target
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"cannot create {what} {path}: {ancestor} is a file, not a folder; choose another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {what} {path}: {ancestor} is not writable; choose another path")
    return Path(path)


def parse_json(text: str, where: str, hint: str = "") -> Any:
    """``json.loads(text)``; :class:`InputError` naming ``where`` (with the line, for text of
    several lines) when the text is not valid JSON or nests too deeply to read. ``hint`` says
    what to do."""
    hint = f"; {hint}" if hint else ""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        loc = f"{where}:{e.lineno}" if "\n" in text.strip() else where
        raise InputError(f"{loc}: not valid JSON ({e.msg}){hint}") from None
    except RecursionError:
        raise InputError(f"{where}: JSON nested too deeply to read{hint}") from None


def read_json(path: str | os.PathLike[str], hint: str = "") -> Any:
    """The JSON document in the file ``path``, with :func:`parse_json`'s errors."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{p}: no such file{'; ' + hint if hint else ''}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start}){'; ' + hint if hint else ''}") from None
    return parse_json(text, str(p), hint)
