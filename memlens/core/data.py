"""Paragraphs: token ids split into a prefix and a continuation, with ids and metadata.

A :class:`ParagraphSet` holds ``n`` paragraphs of the same length as one LongTensor
``[n, prefix_len + continuation_len]``; it is built from texts, JSONL, CSV or token tensors and
validated with errors that name the file and line or the paragraph id.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from memlens.core import readers
from memlens.core.defaults import DEFAULT_CONTINUATION_LEN, DEFAULT_PREFIX_LEN
from memlens.core.errors import InputError
from memlens.core.io import write_text_atomic

if TYPE_CHECKING:
    from memlens.core.model import HookedModel

INT64_MAX = 2**63 - 1


def _header_split(header: dict[str, Any], path: Path) -> tuple[int, int]:
    """The (prefix_len, continuation_len) of a ParagraphSet header line, checked: both present
    and positive integers."""
    values = []
    for key in ("prefix_len", "continuation_len"):
        v = header.get(key)
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            got = "missing" if key not in header else f"{v!r}"
            raise InputError(f"{path}:1: the ParagraphSet header's {key} is {got}, not an integer >= 1; fix the "
                             "header line (as ParagraphSet.save writes it) or delete it and pass the lengths")
        values.append(v)
    return values[0], values[1]


def check_token_ids(tokens: Any, where: str) -> None:
    """Refuse a record's ``tokens`` unless it is a list of integer ids from 0 to 2**63 - 1 (what
    a LongTensor holds): an :class:`InputError` naming ``where`` (file, line, paragraph id)."""
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise InputError(f"{where}: 'tokens' must be a list of integers")
    big = next((t for t in tokens if not 0 <= t <= INT64_MAX), None)
    if big is not None:
        raise InputError(f"{where}: token id {big} is not a token id (ids are integers from 0 to the "
                         "vocabulary size); were these ids made with another tokenizer?")


def check_fits_context(prefix_len: int, continuation_len: int, n_ctx: int | None) -> None:
    """Refuse paragraphs of ``prefix_len + continuation_len`` tokens that a model with context
    ``n_ctx`` (None: unbounded) cannot read."""
    if n_ctx is not None and prefix_len + continuation_len > n_ctx:
        raise InputError(
            f"paragraphs of {prefix_len + continuation_len} tokens ({prefix_len} prefix + {continuation_len} "
            f"continuation) exceed the model's context of {n_ctx}; use shorter lengths"
        )


def as_paragraph_set(value: Any, model: "HookedModel | None" = None, what: str = "this analysis") -> "ParagraphSet":
    """``value`` as a :class:`ParagraphSet`: a ParagraphSet as it is, one :class:`Paragraph` as a
    set of one, a list of texts tokenized with ``model``'s tokenizer (:meth:`ParagraphSet.from_texts`,
    default split), a 2-D token tensor (:meth:`ParagraphSet.from_tokens`); anything else is an
    :class:`InputError` that says what to pass."""
    if isinstance(value, ParagraphSet):
        return value
    if isinstance(value, Paragraph):
        return ParagraphSet(value.tokens[None], value.prefix_len, len(value.tokens) - value.prefix_len, [value.id])
    if isinstance(value, Tensor) and value.dim() == 2 and not value.is_floating_point() and value.dtype != torch.bool:
        return ParagraphSet.from_tokens(value)
    if (isinstance(value, (list, tuple)) and value and all(isinstance(t, str) for t in value)
            and model is not None and getattr(model, "tokenizer", None) is not None):
        return ParagraphSet.from_texts(list(value), model)
    got = type(value).__name__
    if isinstance(value, (list, tuple)):
        got += f" of {len(value)} {type(value[0]).__name__ if value else 'items'}"
    raise InputError(f"{what} expects a ParagraphSet, got a {got}; build one with "
                     "ParagraphSet.from_texts(texts, model), ParagraphSet.from_tokens(tokens, prefix_len) or "
                     "ParagraphSet.from_file(path, model)")


@dataclass
class Paragraph:
    """One paragraph: ``tokens[:prefix_len]`` is the prefix, the rest the continuation."""

    id: str
    tokens: Int[Tensor, " length"]
    prefix_len: int
    text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def prefix(self) -> Int[Tensor, " prefix"]:
        return self.tokens[: self.prefix_len]

    @property
    def continuation(self) -> Int[Tensor, " continuation"]:
        return self.tokens[self.prefix_len :]


class ParagraphSet:
    """An ordered set of equal-length paragraphs.

    Attributes:
        tokens: ``[n, prefix_len + continuation_len]`` token ids.
        prefix_len, continuation_len: the split of every paragraph.
        ids: one string id per paragraph (unique).
        texts: source texts where known (else ``None`` entries).
        metadata: per-paragraph columns, each a list aligned with ``ids`` (e.g. ``copies``).
    """

    def __init__(
        self,
        tokens: Int[Tensor, "n length"],
        prefix_len: int = DEFAULT_PREFIX_LEN,
        continuation_len: int | None = None,
        ids: Sequence[str] | None = None,
        texts: Sequence[str | None] | None = None,
        metadata: dict[str, Sequence[Any]] | None = None,
    ) -> None:
        tokens = torch.as_tensor(tokens)
        if tokens.ndim != 2:
            raise InputError(
                f"paragraph tokens must be a 2-D tensor [n, length], got shape {tuple(tokens.shape)}"
            )
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise InputError(f"paragraph tokens must be integer ids, got dtype {tokens.dtype}")
        tokens = tokens.long()
        n, length = tokens.shape
        if continuation_len is None:
            continuation_len = length - prefix_len
        if prefix_len < 1 or continuation_len < 1:
            raise InputError(
                f"prefix_len ({prefix_len}) and continuation_len ({continuation_len}) must both be >= 1"
            )
        if length < prefix_len + continuation_len:
            raise InputError(
                f"paragraphs have {length} tokens, fewer than prefix_len + continuation_len = "
                f"{prefix_len} + {continuation_len}; pass shorter lengths or longer paragraphs"
            )
        tokens = tokens[:, : prefix_len + continuation_len].contiguous()
        ids = [str(i) for i in (ids if ids is not None else range(n))]
        if len(ids) != n:
            raise InputError(f"got {len(ids)} ids for {n} paragraphs")
        if len(set(ids)) != n:
            dup = next(i for i in ids if ids.count(i) > 1)
            raise InputError(f"paragraph ids must be unique; {dup!r} occurs more than once")
        if (tokens < 0).any():
            bad = int((tokens < 0).any(dim=1).nonzero()[0])
            raise InputError(f"paragraph {ids[bad]!r} has a negative token id")
        texts = list(texts) if texts is not None else [None] * n
        if len(texts) != n:
            raise InputError(f"got {len(texts)} texts for {n} paragraphs")
        metadata = {k: list(v) for k, v in (metadata or {}).items()}
        for key, col in metadata.items():
            if len(col) != n:
                raise InputError(f"metadata column {key!r} has {len(col)} values for {n} paragraphs")
        self.tokens = tokens
        self.prefix_len = int(prefix_len)
        self.continuation_len = int(continuation_len)
        self.ids = ids
        self.texts = texts
        self.metadata = metadata
        self.skipped: list[str] = []  # ids a reader left out (skip_short)

    # construction -------------------------------------------------------------------------
    @classmethod
    def from_tokens(
        cls,
        tokens: Int[Tensor, "n length"] | Sequence[Sequence[int]],
        prefix_len: int = DEFAULT_PREFIX_LEN,
        continuation_len: int | None = None,
        ids: Sequence[str] | None = None,
        **metadata: Sequence[Any],
    ) -> "ParagraphSet":
        """Paragraphs from a token tensor ``[n, length]`` (extra columns beyond the split are cut)."""
        return cls(torch.as_tensor(tokens), prefix_len, continuation_len, ids, metadata=metadata)

    @classmethod
    def from_texts(
        cls,
        texts: Sequence[str],
        model: "HookedModel",
        prefix_len: int = DEFAULT_PREFIX_LEN,
        continuation_len: int = DEFAULT_CONTINUATION_LEN,
        ids: Sequence[str] | None = None,
        skip_short: bool = False,
        **metadata: Any,
    ) -> "ParagraphSet":
        """Tokenize ``texts`` with the model's tokenizer (no BOS unless the model prepends one)
        and keep each text's first ``prefix_len + continuation_len`` tokens. ``skip_short`` leaves
        out texts with fewer tokens (their ids in :attr:`skipped`); every other keyword is a
        metadata column with one value per text."""
        if isinstance(texts, str):
            raise InputError("from_texts takes a list of texts, got one string; wrap it: [text]")
        texts = list(texts)
        for key, col in metadata.items():
            if isinstance(col, (str, bytes)) or not hasattr(col, "__len__") or len(col) != len(texts):
                raise InputError(f"from_texts got {key}={col!r:.40}: an unknown keyword argument, or a metadata column "
                                 f"without one value per text ({len(texts)}); keywords are prefix_len, "
                                 "continuation_len, ids, skip_short and metadata columns")
        ids = [str(i) for i in (ids if ids is not None else range(len(texts)))]
        return cls._from_token_lists(
            [model.to_tokens(t)[0].tolist() for t in texts],
            ids,
            prefix_len,
            continuation_len,
            texts=texts,
            metadata=metadata,
            where=[f"paragraph {i!r}" for i in ids],
            skip_short=skip_short,
        )

    @classmethod
    def _from_token_lists(
        cls,
        token_lists: list[list[int]],
        ids: list[str],
        prefix_len: int,
        continuation_len: int,
        texts: list[str | None] | None,
        metadata: dict[str, Sequence[Any]],
        where: list[str],
        skip_short: bool = False,
    ) -> "ParagraphSet":
        need = prefix_len + continuation_len
        if not token_lists:
            raise InputError(f"no paragraphs given ({where[0] if where else 'empty input'})")
        short = [i for i, toks in enumerate(token_lists) if len(toks) < need]
        if short and not skip_short:
            i = short[0]
            more = f" ({len(short) - 1} more)" if len(short) > 1 else ""
            raise InputError(
                f"{where[i]} has {len(token_lists[i])} tokens, fewer than prefix_len + continuation_len = "
                f"{prefix_len} + {continuation_len}{more}; drop it, use shorter lengths, or skip short paragraphs "
                "(skip_short=True, --skip-short)"
            )
        keep = [i for i in range(len(token_lists)) if i not in set(short)]
        if not keep:
            raise InputError(f"every paragraph has fewer than {need} tokens ({where[0]}, ...); use shorter lengths")
        texts = texts if texts is not None else [None] * len(token_lists)
        out = cls(torch.tensor([token_lists[i][:need] for i in keep], dtype=torch.long), prefix_len, continuation_len,
                  [ids[i] for i in keep], [texts[i] for i in keep],
                  {k: [col[i] for i in keep] for k, col in metadata.items()})
        out.skipped = [ids[i] for i in short]
        if short:
            warnings.warn(f"skipped {len(short)} paragraph(s) shorter than {need} tokens: {out.skipped[:5]}",
                          stacklevel=3)
        return out

    @classmethod
    def from_jsonl(
        cls,
        path: str | Path,
        model: "HookedModel | None" = None,
        prefix_len: int = DEFAULT_PREFIX_LEN,
        continuation_len: int = DEFAULT_CONTINUATION_LEN,
        skip_short: bool = False,
    ) -> "ParagraphSet":
        """Read one paragraph per line: ``{"id": ..., "tokens": [...]}`` or ``{"id": ..., "text": ...}``
        (texts need ``model``); every other key becomes a metadata column. A first line
        ``{"memlens": "ParagraphSet", ...}`` (what :meth:`save` writes) gives the split when the
        default lengths are asked for. ``skip_short`` leaves out paragraphs shorter than the split
        (their ids in :attr:`skipped`, with a warning) instead of refusing the file."""
        path = Path(path)
        rows, header = readers.jsonl_rows(path)
        if header is not None and (prefix_len, continuation_len) == (DEFAULT_PREFIX_LEN, DEFAULT_CONTINUATION_LEN):
            prefix_len, continuation_len = _header_split(header, path)
        return cls._from_rows(rows, path, model, prefix_len, continuation_len, skip_short=skip_short)

    @classmethod
    def from_csv(
        cls,
        path: str | Path,
        model: "HookedModel | None" = None,
        prefix_len: int = DEFAULT_PREFIX_LEN,
        continuation_len: int = DEFAULT_CONTINUATION_LEN,
        text_column: str | None = None,
        id_column: str = "id",
        skip_short: bool = False,
    ) -> "ParagraphSet":
        """Read a CSV with a text column (``text`` or ``paragraph``, or ``text_column``) or a
        ``tokens`` column (space-separated ids); ``id`` and all other columns are kept."""
        path = Path(path)
        rows = readers.csv_rows(path, text_column)
        return cls._from_rows(rows, path, model, prefix_len, continuation_len, id_column, skip_short)

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        model: "HookedModel | None" = None,
        prefix_len: int = DEFAULT_PREFIX_LEN,
        continuation_len: int = DEFAULT_CONTINUATION_LEN,
        skip_short: bool = False,
    ) -> "ParagraphSet":
        """A CSV (by extension) or JSONL paragraph file (also one written by :meth:`save`)."""
        path = Path(path)
        reader = cls.from_csv if path.suffix.lower() == ".csv" else cls.from_jsonl
        return reader(path, model, prefix_len, continuation_len, skip_short=skip_short)

    @classmethod
    def from_records(
        cls, records: list[dict[str, Any]], prefix_len: int, continuation_len: int, exclude: Sequence[str] = ()
    ) -> "ParagraphSet":
        """The inverse of :meth:`to_records`; keys in ``exclude`` are not metadata."""
        skip = {"id", "tokens", "text", *exclude}
        keys = [k for k in records[0] if k not in skip] if records else []
        return cls(
            torch.tensor([r["tokens"] for r in records]), prefix_len, continuation_len,
            [r["id"] for r in records], [r.get("text") for r in records],
            {k: [r.get(k) for r in records] for k in keys},
        )

    @classmethod
    def _from_rows(
        cls,
        rows: list[tuple[int, dict[str, Any]]],
        path: Path,
        model: "HookedModel | None",
        prefix_len: int,
        continuation_len: int,
        id_column: str = "id",
        skip_short: bool = False,
        allow_empty: bool = False,
    ) -> "ParagraphSet | None":
        """Paragraphs from ``(line number, record)`` pairs of ``path``; with ``allow_empty`` (a
        streamed chunk), None instead of an error when every paragraph is skipped as short."""
        if not rows:
            raise InputError(f"{path}: the file holds no paragraphs")
        token_lists, ids, texts, where = [], [], [], []
        meta: dict[str, list[Any]] = {}
        for k, (lineno, row) in enumerate(rows):
            pid = str(row.get(id_column, k))
            loc = f"{path}:{lineno} (paragraph {pid!r})"
            if "tokens" in row and not isinstance(row["tokens"], str):
                toks = row["tokens"]
                check_token_ids(toks, loc)
                text = row.get("text")
            else:
                text = row.get("text")
                if not isinstance(text, str):
                    raise InputError(f"{loc}: 'text' must be a string")
                if model is None:
                    raise InputError(f"{loc}: paragraphs given as text need a model to tokenize them; pass model=")
                toks = model.to_tokens(text)[0].tolist()
            token_lists.append(toks)
            ids.append(pid)
            texts.append(text)
            where.append(loc)
            for key, value in row.items():
                if key not in ("tokens", "text", id_column):
                    meta.setdefault(key, [None] * k).append(value)
            for col in meta.values():
                if len(col) < k + 1:
                    col.append(None)
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise InputError(f"{path}: paragraph id {dup!r} occurs more than once; ids must be unique")
        if allow_empty and skip_short and all(len(t) < prefix_len + continuation_len for t in token_lists):
            return None
        return cls._from_token_lists(token_lists, ids, prefix_len, continuation_len, texts, meta, where, skip_short)

    # access -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index: int | slice | Sequence[int] | Tensor) -> "Paragraph | ParagraphSet":
        if isinstance(index, int) or (isinstance(index, Tensor) and index.ndim == 0):
            i = int(index)
            if not -len(self) <= i < len(self):
                raise IndexError(f"paragraph index {i} out of range for a set of {len(self)}")
            return Paragraph(
                self.ids[i],
                self.tokens[i],
                self.prefix_len,
                self.texts[i],
                {k: v[i] for k, v in self.metadata.items()},
            )
        if isinstance(index, slice):
            positions = list(range(len(self)))[index]
        else:
            idx = torch.as_tensor(index)
            if idx.dtype == torch.bool:
                if idx.shape != (len(self),):
                    raise IndexError(f"boolean mask of shape {tuple(idx.shape)} for a set of {len(self)}")
                idx = idx.nonzero().flatten()
            positions = [int(i) for i in idx.flatten()]
        return self._select(positions)

    def _select(self, positions: list[int]) -> "ParagraphSet":
        pos = torch.tensor(positions, dtype=torch.long)
        return ParagraphSet(
            self.tokens[pos] if positions else self.tokens[:0],
            self.prefix_len,
            self.continuation_len,
            [self.ids[i] for i in positions],
            [self.texts[i] for i in positions],
            {k: [v[i] for i in positions] for k, v in self.metadata.items()},
        )

    @property
    def prefixes(self) -> Int[Tensor, "n prefix"]:
        return self.tokens[:, : self.prefix_len]

    @property
    def continuations(self) -> Int[Tensor, "n continuation"]:
        return self.tokens[:, self.prefix_len :]

    @property
    def length(self) -> int:
        return self.prefix_len + self.continuation_len

    @property
    def copies(self) -> Int[Tensor, " n"]:
        """Duplication counts (the ``copies`` metadata column) as a LongTensor."""
        if "copies" not in self.metadata:
            raise AttributeError("this ParagraphSet has no 'copies' metadata column")
        return torch.tensor([int(c) for c in self.metadata["copies"]], dtype=torch.long)

    def index_of(self, paragraph_id: str) -> int:
        try:
            return self.ids.index(str(paragraph_id))
        except ValueError:
            raise KeyError(f"no paragraph with id {paragraph_id!r}") from None

    def filter(self, keep: Callable[[Paragraph], bool] | Tensor | Sequence[bool]) -> "ParagraphSet":
        """The paragraphs for which ``keep`` (a predicate or a boolean mask) is true."""
        if callable(keep):
            positions = [i for i in range(len(self)) if keep(self[i])]
        else:
            mask = torch.as_tensor(keep, dtype=torch.bool)
            if mask.shape != (len(self),):
                raise InputError(f"filter mask has shape {tuple(mask.shape)}, expected ({len(self)},)")
            positions = mask.nonzero().flatten().tolist()
        return self._select(positions)

    def check_compatible(self, other: "ParagraphSet", what: str = "paragraph sets") -> None:
        """Raise if ``other`` splits its paragraphs differently."""
        if (self.prefix_len, self.continuation_len) != (other.prefix_len, other.continuation_len):
            raise InputError(
                f"{what} differ in length: {self.prefix_len}+{self.continuation_len} vs "
                f"{other.prefix_len}+{other.continuation_len} tokens (prefix+continuation); "
                "build both with the same prefix_len and continuation_len"
            )

    @classmethod
    def concat(cls, sets: Iterable["ParagraphSet"]) -> "ParagraphSet":
        """One set holding every paragraph of ``sets`` in order (ids must stay unique)."""
        sets = list(sets)
        if not sets:
            raise InputError("concat needs at least one ParagraphSet")
        for s in sets[1:]:
            sets[0].check_compatible(s, "concatenated paragraph sets")
        keys = sorted({k for s in sets for k in s.metadata})
        return cls(
            torch.cat([s.tokens for s in sets]),
            sets[0].prefix_len,
            sets[0].continuation_len,
            [i for s in sets for i in s.ids],
            [t for s in sets for t in s.texts],
            {k: [v for s in sets for v in s.metadata.get(k, [None] * len(s))] for k in keys},
        )

    def __add__(self, other: "ParagraphSet") -> "ParagraphSet":
        return ParagraphSet.concat([self, other])

    def validate(self, vocab_size: int, n_ctx: int | None = None) -> None:
        """Raise if a token id lies outside ``[0, vocab_size)`` or a paragraph exceeds ``n_ctx``."""
        check_fits_context(self.prefix_len, self.continuation_len, n_ctx)
        bad = (self.tokens >= vocab_size).any(dim=1)
        if bad.any():
            i = int(bad.nonzero()[0])
            tok = int(self.tokens[i].max())
            raise InputError(
                f"paragraph {self.ids[i]!r} has token id {tok}, outside the model's vocabulary of "
                f"{vocab_size}; were these ids made with another tokenizer?"
            )

    # persistence --------------------------------------------------------------------------
    def to_records(self) -> list[dict[str, Any]]:
        return [
            {"id": self.ids[i], "tokens": self.tokens[i].tolist(), "text": self.texts[i]}
            | {k: v[i] for k, v in self.metadata.items()}
            for i in range(len(self))
        ]

    def save(self, path: str | Path) -> None:
        """Write a JSONL file: a header line with the split, then one paragraph per line."""
        header = {"memlens": "ParagraphSet", "prefix_len": self.prefix_len, "continuation_len": self.continuation_len}
        lines = [json.dumps(header)] + [json.dumps(r) for r in self.to_records()]
        write_text_atomic(path, "\n".join(lines) + "\n")

    @classmethod
    def load(cls, path: str | Path, model: "HookedModel | None" = None) -> "ParagraphSet":
        """Read a file written by :meth:`save` (or any JSONL/CSV paragraph file, by extension)."""
        path = Path(path)
        if path.suffix.lower() == ".csv":
            return cls.from_csv(path, model)
        return cls.from_jsonl(path, model)  # a saved file's header line gives the split

    def __repr__(self) -> str:
        meta = f", metadata={sorted(self.metadata)}" if self.metadata else ""
        return (
            f"ParagraphSet(n={len(self)}, prefix_len={self.prefix_len}, "
            f"continuation_len={self.continuation_len}{meta})"
        )
