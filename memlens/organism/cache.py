"""The organism cache: build once into a temporary folder, seal it with a manifest of file
hashes, rename it into place; load only what verifies, rebuild what does not."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import warnings
from pathlib import Path

from memlens.core.errors import CacheError
from memlens.organism.config import ORGANISM_FORMAT

MANIFEST = "MANIFEST.json"


def default_cache_root() -> Path:
    """``$MEMLENS_CACHE`` or ``$XDG_CACHE_HOME/memlens`` or ``~/.cache/memlens``."""
    from memlens.core.io import cache_root

    return cache_root()


def organism_key(size: str, seed: int) -> str:
    """Folder name: size, seed, Python version (the corpus depends on it) and a hash of the
    size's configuration, so that a changed recipe never loads an old build."""
    from memlens.organism.config import get_config

    recipe = hashlib.sha256(json.dumps(get_config(size).to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    return f"organism-{size}-seed{seed}-{py}-v{ORGANISM_FORMAT}-{recipe}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def seal(folder: Path) -> None:
    """Write the manifest: every file's size and SHA-256."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    (folder / MANIFEST).write_text(json.dumps({"format": ORGANISM_FORMAT, "files": manifest}, indent=1))


def verify(folder: Path) -> None:
    """Raise :class:`CacheError` unless every file of the manifest is present and intact."""
    mf = folder / MANIFEST
    if not mf.exists():
        raise CacheError(f"{folder}: no {MANIFEST} (partial or interrupted build)")
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except (ValueError, RecursionError):
        raise CacheError(f"{folder}: {MANIFEST} is corrupted") from None
    if not isinstance(manifest, dict) or manifest.get("format") != ORGANISM_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise CacheError(f"{folder}: cache format {got!r} != {ORGANISM_FORMAT}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
            isinstance(rec, dict) and isinstance(rec.get("bytes"), int) and isinstance(rec.get("sha256"), str)
            for rec in files.values()):
        raise CacheError(f"{folder}: {MANIFEST} does not list files with their sizes and hashes (corrupted)")
    for rel, rec in files.items():
        p = folder / rel
        if not p.is_file():
            raise CacheError(f"{folder}: {rel} is missing")
        if p.stat().st_size != rec["bytes"] or _sha256(p) != rec["sha256"]:
            raise CacheError(f"{folder}: {rel} does not match its recorded hash (corrupted)")


def discard(folder: Path, reason: str) -> None:
    warnings.warn(f"memlens: discarding the organism cache at {folder}: {reason}; rebuilding", stacklevel=3)
    shutil.rmtree(folder, ignore_errors=True)
