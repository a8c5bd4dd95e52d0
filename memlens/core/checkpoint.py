"""Checkpoints of long computations that know what they were made with.

A :class:`Checkpoint` is a JSON-lines file: a header line with the computation's *identity* (the
model, its weight form and precision, every setting that changes a row, the paragraphs' ids and
tokens), then one line per finished piece (a trial, a grid point, a seed...), each with its key.
Opening it for a resume compares identities first: a checkpoint made with anything different is
refused with the differences named (or, with ``fresh=True``, started afresh), so that a resume can
never mix rows of two computations. A torn last line (a kill during a write) is dropped; a damaged
line in the middle is refused. Every resumable computation of memlens uses it (docs/results.md
lists them).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from memlens.core.errors import InputError
from memlens.core.io import write_text_atomic

if TYPE_CHECKING:
    from memlens.core.data import ParagraphSet
    from memlens.core.model import HookedModel

CHECKPOINT_FORMAT = "memlens.checkpoint"
CHECKPOINT_VERSION = 1


def paragraph_fingerprint(paragraphs: "ParagraphSet | None") -> dict[str, Any] | None:
    """What identifies a paragraph set in a checkpoint: its size, split, and hashes of its ids
    (in order) and of its token ids."""
    if paragraphs is None:
        return None
    ids = hashlib.sha256("\x00".join(paragraphs.ids).encode()).hexdigest()[:16]
    tokens = hashlib.sha256(paragraphs.tokens.numpy().tobytes()).hexdigest()[:16]
    return {"n": len(paragraphs), "prefix_len": paragraphs.prefix_len, "ids_sha256": ids, "tokens_sha256": tokens,
            "first_ids": list(paragraphs.ids[:3])}


def model_identity(model: "HookedModel") -> dict[str, Any]:
    """The model part of a checkpoint's identity: its name (``+processed`` for processed weights),
    precision and the dtype of its weights."""
    return {"model": model.name, "precision": model.precision, "dtype": str(model.dtype).replace("torch.", "")}


def identity_differences(have: dict[str, Any], want: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: saved -> now`` for every entry that differs (nested dicts compared key by key)."""
    out = []
    for k in sorted(set(have) | set(want), key=str):
        a, b = have.get(k, "<absent>"), want.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += identity_differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {_short(a)} -> {_short(b)}")
    return out


def _short(v: Any) -> str:
    text = json.dumps(v, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _canonical(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples as lists, keys as strings)."""
    return json.loads(json.dumps(value, default=str))


class Checkpoint:
    """The finished pieces of one computation, resumable only by the same computation.

    Args:
        path: the JSON-lines file.
        kind: what computation writes it (``compare_masks``, ``localization``, ...).
        identity: everything that determines its rows (JSON-able).
        fresh: discard a checkpoint made with another identity instead of refusing it.

    Example::

        ckpt = Checkpoint(path, "compare_masks", {"model": ..., "settings": ...})
        done = ckpt.load()                 # key -> record, {} for a new checkpoint
        ckpt.append(("unlearn", "topk", 0), {...})
        ckpt.remove()                      # once the result is safely written
    """

    def __init__(self, path: str | os.PathLike[str], kind: str, identity: dict[str, Any], *, fresh: bool = False) -> None:
        self.path = Path(path)
        self.kind = kind
        self.identity = _canonical(identity)
        self.fresh = fresh
        self._opened = False

    @property
    def header(self) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "kind": self.kind, "identity": self.identity}

    def load(self) -> dict[tuple, dict[str, Any]]:
        """The finished pieces by key; creates the file (header only) when there is none. Refuses a
        checkpoint of another kind or identity (unless ``fresh``), one without a header (written
        before checkpoints recorded what made them), and a damaged line before the last."""
        self._opened = True
        if not self.path.exists():
            self._start()
            return {}
        if self.path.is_dir():
            raise InputError(f"the checkpoint {self.path} is a directory; give a file path")
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        header = _parse(lines[0]) if lines else None
        problem = self._problem(header)
        if problem is not None:
            if self.fresh:
                self._start()
                return {}
            raise InputError(f"{self.path}: {problem}; resume with the same settings, or start afresh "
                             "(fresh=True / --fresh, or delete the file)")
        done, torn = _records(self.path, lines)
        if torn:  # a torn last line: that piece is computed again
            self._rewrite(lines[1:-1])
        return done

    @staticmethod
    def read(path: str | os.PathLike[str], kind: str) -> tuple[dict[str, Any], dict[tuple, dict[str, Any]]]:
        """The identity and the finished pieces of the ``kind`` checkpoint at ``path``, read without
        checking them against a computation and without changing the file (a torn last line is
        skipped, not removed): what a partial table of a running or interrupted computation reads."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no checkpoint file there")
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        header = _parse(lines[0]) if lines else None
        if not isinstance(header, dict) or header.get("format") != CHECKPOINT_FORMAT:
            raise InputError(f"{path}: holds no checkpoint header; give the checkpoint file a {kind} run writes")
        if header.get("kind") != kind:
            raise InputError(f"{path}: is a checkpoint of {header.get('kind')!r}, not of {kind!r}")
        if not isinstance(header.get("identity"), dict):
            raise InputError(f"{path}: has a damaged header")
        return header["identity"], _records(path, lines)[0]

    def append(self, key: Iterable[Any], record: dict[str, Any]) -> None:
        """Add one finished piece (flushed to disk before returning)."""
        if not self._opened:
            self.load()
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"key": list(key), "record": record}, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def remove(self) -> None:
        """Delete the checkpoint (call it once the computation's output is safely written)."""
        self.path.unlink(missing_ok=True)

    def _problem(self, header: Any) -> str | None:
        if not isinstance(header, dict) or header.get("format") != CHECKPOINT_FORMAT:
            return ("holds no checkpoint header (a file of another kind, or a checkpoint of an older memlens that did "
                    "not record its settings, which cannot be told apart from another computation's)")
        if header.get("kind") != self.kind:
            return f"is a checkpoint of {header.get('kind')!r}, not of {self.kind!r}"
        if not isinstance(header.get("version"), int) or header["version"] > CHECKPOINT_VERSION:
            return f"has checkpoint version {header.get('version')!r}, newer than this memlens reads"
        have = header.get("identity")
        if not isinstance(have, dict):
            return "has a damaged header"
        diff = identity_differences(have, self.identity)
        if diff:
            return "was made with other settings (" + "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "") + ")"
        return None

    def _start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, json.dumps(self.header, default=str) + "\n")

    def _rewrite(self, body: list[str]) -> None:
        write_text_atomic(self.path, "\n".join([json.dumps(self.header, default=str), *body]) + "\n")


def _records(path: Path, lines: list[str]) -> tuple[dict[tuple, dict[str, Any]], bool]:
    """The finished pieces of a checkpoint's ``lines`` (after the header) by key, and whether the
    last line is torn (left out); a damaged line before the last is refused."""
    done: dict[tuple, dict[str, Any]] = {}
    for n, line in enumerate(lines[1:], start=2):
        record = _parse(line)
        if not isinstance(record, dict) or not isinstance(record.get("key"), list) or "record" not in record:
            if n == len(lines):
                return done, True
            raise InputError(f"{path}, line {n}: a damaged checkpoint line ({line[:60]!r}); delete the file to start "
                             "over")
        done[tuple(record["key"])] = record["record"]
    return done, False


def _parse(line: str) -> Any:
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        return None
