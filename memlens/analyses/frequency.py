"""Unigram token counts: how rare each token is in a corpus (for the memorization head's
attention to rare tokens, Stoehr et al., 2024, Section 6)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from memlens.core.defaults import RANK_TIES, RankTies, one_of
from memlens.core.errors import InputError
from memlens.core.io import atomic_path, read_json

if TYPE_CHECKING:
    from memlens.core.data import ParagraphSet
    from memlens.core.model import HookedModel
    from memlens.core.ground_truth import GroundTruth


@dataclass
class UnigramCounts:
    """``counts[token]``: how often each token id occurs in a corpus (integers, ``[vocab]``)."""

    counts: Int[Tensor, " vocab"]
    source: str = ""

    def __post_init__(self) -> None:
        self.counts = torch.as_tensor(self.counts).long().flatten()
        if (self.counts < 0).any():
            raise InputError(f"unigram counts must be >= 0 (source: {self.source or 'tensor'})")

    @property
    def vocab_size(self) -> int:
        return len(self.counts)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def of(self, tokens: Int[Tensor, "..."]) -> Int[Tensor, "..."]:
        """The count of every token in ``tokens`` (same shape)."""
        tokens = torch.as_tensor(tokens).long()
        if tokens.numel() and int(tokens.max()) >= self.vocab_size:
            raise InputError(f"token id {int(tokens.max())} is outside the counts' vocabulary of {self.vocab_size} "
                             f"(source: {self.source or 'tensor'}); count over the model's vocabulary")
        return self.counts[tokens]

    def log_frequency(self, tokens: Int[Tensor, "..."]) -> Float[Tensor, "..."]:
        """log of the relative frequency, add-one smoothed (natural log; unseen tokens are finite)."""
        return torch.log((self.of(tokens).double() + 1.0) / (self.total + self.vocab_size))

    def rarity_rank(self, tokens: Int[Tensor, " n"], ties: RankTies = "ordinal") -> Int[Tensor, " n"]:
        """Rank of each token of one sequence by corpus count, 0 = rarest.

        Args:
            tokens: one sequence.
            ties: ``ordinal`` = ranks 0..n-1, equal counts ordered by position (memlens's
                default); ``dense`` = equal counts share a rank and ranks leave no gaps
                (``scipy.stats.rankdata(counts, method="dense") - 1``, the paper's "allowing ties").
        """
        counts = self.of(tokens)
        if ties == "dense":
            return torch.unique(counts, sorted=True, return_inverse=True)[1]
        if ties != "ordinal":
            raise InputError(f"unknown tie rule {ties!r}; use {one_of(RANK_TIES)}")
        order = torch.argsort(counts, stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order))
        return rank

    # --- constructors ----------------------------------------------------------------------
    @classmethod
    def from_organism(cls, info: "GroundTruth") -> "UnigramCounts":
        """The counts over the organism's whole training stream (any :class:`GroundTruth`)."""
        return cls(info.unigram_counts.clone(), source="organism training stream")

    @classmethod
    def default_for(cls, model: "HookedModel", paragraphs: "ParagraphSet") -> "UnigramCounts":
        """The training-stream counts of a model that carries them in its ground truth (the
        organism), else counts over ``paragraphs`` (a rough stand-in for corpus counts)."""
        counts = getattr(model.ground_truth, "unigram_counts", None)
        if counts is not None:
            return cls(counts.clone(), source=f"{model.name} training stream")
        return cls.from_paragraphs(paragraphs, model.vocab_size)

    @classmethod
    def from_paragraphs(cls, paragraphs: "ParagraphSet", vocab_size: int) -> "UnigramCounts":
        """Counts over the tokens of a ParagraphSet (prefixes and continuations)."""
        toks = paragraphs.tokens.flatten()
        if toks.numel() and int(toks.max()) >= vocab_size:
            raise InputError(f"paragraph token id {int(toks.max())} >= vocab_size {vocab_size}")
        return cls(torch.bincount(toks, minlength=vocab_size), source=f"{len(paragraphs)} paragraphs")

    @classmethod
    def from_file(cls, path: str | Path, vocab_size: int | None = None) -> "UnigramCounts":
        """Counts from a file: ``.pt`` / ``.npy`` (a ``[vocab]`` vector), ``.json`` (a list, or an
        object ``{"token_id": count}``) or ``.csv`` / ``.tsv`` with columns ``token_id,count``."""
        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: no such unigram-count file")
        suffix = path.suffix.lower()
        try:
            if suffix == ".pt":
                counts = torch.load(path, weights_only=True)
            elif suffix == ".npy":
                import numpy as np

                counts = torch.from_numpy(np.load(path))
            elif suffix == ".json":
                data = read_json(path)
                counts = torch.tensor(data) if isinstance(data, list) else _from_pairs(
                    [(k, v, f"key {k!r}") for k, v in data.items()], vocab_size, path)
            elif suffix in (".csv", ".tsv"):
                with path.open(newline="") as f:
                    rows = list(csv.reader(f, delimiter="\t" if suffix == ".tsv" else ","))
                if rows and not rows[0][0].strip().lstrip("-").isdigit():
                    rows = [(r + [""])[:2] + [f"line {i + 2}"] for i, r in enumerate(rows[1:])]
                else:
                    rows = [(r + [""])[:2] + [f"line {i + 1}"] for i, r in enumerate(rows)]
                counts = _from_pairs(rows, vocab_size, path)
            else:
                raise InputError(f"{path}: unknown unigram-count format {suffix!r}; use .pt, .npy, .json, .csv or .tsv")
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - any parse failure becomes one clear message
            raise InputError(f"{path}: could not read unigram counts ({type(e).__name__}: {e})") from e
        out = cls(counts, source=str(path))
        if vocab_size is not None and out.vocab_size < vocab_size:
            out.counts = torch.cat([out.counts, torch.zeros(vocab_size - out.vocab_size, dtype=torch.long)])
        return out

    def save(self, path: str | Path) -> None:
        with atomic_path(Path(path)) as tmp:
            torch.save(self.counts, tmp)


def _from_pairs(rows: list, vocab_size: int | None, path: Path) -> Tensor:
    pairs = []
    for token, count, where in rows:
        try:
            pairs.append((int(token), int(float(count))))
        except ValueError:
            raise InputError(f"{path}, {where}: expected an integer token id and a count, got {token!r}, {count!r}") from None
    if not pairs:
        raise InputError(f"{path}: no counts found")
    n = max(vocab_size or 0, max(t for t, _ in pairs) + 1)
    counts = torch.zeros(n, dtype=torch.long)
    for t, c in pairs:
        if t < 0:
            raise InputError(f"{path}: negative token id {t}")
        counts[t] += c
    return counts
