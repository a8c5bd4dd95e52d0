"""The organism's text corpus: the Python standard library, found on every Python install.

Documents are the source files of the standard library (code, comments and docstrings mixed,
like the Pile's GitHub share) and the documentation topics of ``pydoc_data`` (prose). The same
Python version and seed give the same corpus; its SHA-256 is recorded in the organism metadata.
"""

from __future__ import annotations

import hashlib
import os
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

_SKIP_DIRS = ("site-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "__pycache__")
_BLANK_RUNS = re.compile(r"\n{3,}")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")


@dataclass(frozen=True)
class Document:
    """One cleaned document of the corpus."""

    source: str
    text: str


def clean_text(text: str) -> str:
    """Normalise a document: tabs to spaces, no trailing blanks, at most one empty line in a row."""
    text = text.replace("\r\n", "\n").replace("\t", "    ")
    text = _TRAILING_SPACE.sub("\n", text)
    text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip() + "\n"


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        files.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def load_documents() -> list[Document]:
    """Every document of the corpus, in a fixed order (documentation topics, then source files)."""
    import pydoc_data.topics

    root = Path(sysconfig.get_paths()["stdlib"])
    docs = [
        Document(f"pydoc_data:{name}", clean_text(body))
        for name, body in sorted(pydoc_data.topics.topics.items())
    ]
    for path in _stdlib_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        docs.append(Document(f"stdlib:{path.relative_to(root).as_posix()}", clean_text(text)))
    return [d for d in docs if len(d.text) > 200]


def corpus_hash(docs: list[Document]) -> str:
    """SHA-256 over every document's source name and text."""
    h = hashlib.sha256()
    for d in docs:
        h.update(d.source.encode())
        h.update(b"\0")
        h.update(d.text.encode())
        h.update(b"\0")
    return h.hexdigest()
