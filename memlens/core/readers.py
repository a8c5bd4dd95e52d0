"""Reading paragraph files into ``(line number, record)`` rows, with errors that name the file and
line: JSONL (one object per line), CSV (a text or tokens column) and the files
:meth:`memlens.ParagraphSet.save` writes (JSONL with a header line). :class:`memlens.ParagraphSet` turns the rows into
paragraphs (tokenizing texts, checking lengths)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

from memlens.core.errors import InputError
from memlens.core.io import parse_json

Row = tuple[int, dict[str, Any]]
#: the first line of a file written by ParagraphSet.save
SAVED_MARKER = "ParagraphSet"


def read_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, line)`` of a UTF-8 text file; a missing, unreadable, empty or non-UTF-8 file
    is an :class:`InputError` that says which and what to do."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start}); convert the file to UTF-8") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read the file ({e.strerror})") from None
    if not text.strip():
        raise InputError(f"{path}: the file is empty")
    return list(enumerate(text.split("\n"), start=1))


def jsonl_rows(path: Path) -> tuple[list[Row], dict[str, Any] | None]:
    """The records of a JSONL paragraph file (``{"id": ..., "tokens": [...]}`` or ``{"id": ...,
    "text": ...}`` per line, blank lines skipped) and its ``{"memlens": "ParagraphSet", ...}`` header
    line if it has one."""
    rows: list[Row] = []
    header = None
    for lineno, line in read_lines(path):
        if not line.strip():
            continue
        row = parse_json(line, f"{path}:{lineno}", "fix or remove the line")
        if not rows and header is None and isinstance(row, dict) and row.get("memlens") == SAVED_MARKER:
            header = row
            continue
        if not isinstance(row, dict) or ("tokens" not in row and "text" not in row):
            raise InputError(f"{path}:{lineno}: each line must be a JSON object with a 'tokens' list or a 'text' string")
        rows.append((lineno, row))
    return rows, header


def csv_rows(path: Path, text_column: str | None = None) -> list[Row]:
    """The records of a CSV paragraph file: the text column (``text`` or ``paragraph``, or
    ``text_column``) becomes ``text``; a ``tokens`` column (space-separated ids) becomes a list of
    ints; every other column is kept. Quoted multi-line fields and a byte-order mark are read as
    written."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    read_lines(path)  # the same missing / empty / not-UTF-8 errors as JSONL files
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            header = reader.fieldnames or []
        except csv.Error as e:
            raise InputError(f"{path}:1: malformed CSV header ({e})") from None
        if text_column is None:
            text_column = next((c for c in ("text", "paragraph", "tokens") if c in header), None)
        if text_column is None or text_column not in header:
            raise InputError(f"{path}:1: no text column; the header has {header}; name one with text_column=")
        return _records(reader, path, text_column)


def _records(reader: "csv.DictReader", path: Path, text_column: str) -> list[Row]:
    rows: list[Row] = []
    while True:
        lineno = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise InputError(f"{path}:{lineno}: malformed CSV ({e})") from None
        if None in row or any(v is None for v in row.values()):
            raise InputError(f"{path}:{lineno}: the row has a different number of fields than the header")
        if text_column == "tokens":
            try:
                row["tokens"] = [int(t) for t in row["tokens"].split()]
            except ValueError:
                raise InputError(f"{path}:{lineno}: 'tokens' must be space-separated integers") from None
        else:
            row["text"] = row.pop(text_column)
        rows.append((lineno, row))
    return rows
