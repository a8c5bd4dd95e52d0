"""Cutting the tokenized corpus into distinct 100-token paragraphs and choosing the planted,
background and held-out sets."""

from __future__ import annotations

import random
from collections import Counter

import torch

from memlens.core.data import ParagraphSet
from memlens.organism.config import OrganismConfig

_SHINGLE = 12


def cut_windows(doc_tokens: list[list[int]], length: int, min_unique: int) -> list[list[int]]:
    """Non-overlapping windows of ``length`` tokens with at least ``min_unique`` distinct tokens,
    keeping only windows of which at most 30% of 12-gram shingles occur elsewhere in the corpus, so that no
    paragraph is duplicated by accident (licence headers, repeated boilerplate)."""
    windows = [
        doc[i : i + length]
        for doc in doc_tokens
        for i in range(0, len(doc) - length + 1, length)
        if len(set(doc[i : i + length])) >= min_unique
    ]
    shingles = [
        {hash(tuple(w[j : j + _SHINGLE])) for j in range(0, length - _SHINGLE + 1)} for w in windows
    ]
    counts: Counter[int] = Counter()
    for s in shingles:
        counts.update(s)
    return [w for w, s in zip(windows, shingles) if sum(counts[h] > 1 for h in s) <= 0.3 * len(s)]


def select_paragraphs(
    windows: list[list[int]], cfg: OrganismConfig, seed: int
) -> tuple[ParagraphSet, ParagraphSet, ParagraphSet]:
    """Planted (with ``copies``), background (seen once) and held-out (never seen) paragraph sets."""
    need = cfg.n_held_out + len(cfg.planted_copies) * cfg.planted_per_level + cfg.n_background
    if len(windows) < need:
        raise RuntimeError(f"the corpus gave {len(windows)} distinct paragraphs; the organism needs {need}")
    order = list(range(len(windows)))
    random.Random(seed).shuffle(order)
    picked = [windows[i] for i in order[:need]]
    n_planted = len(cfg.planted_copies) * cfg.planted_per_level
    held, planted, background = (
        picked[: cfg.n_held_out],
        picked[cfg.n_held_out : cfg.n_held_out + n_planted],
        picked[cfg.n_held_out + n_planted :],
    )
    copies = [c for c in cfg.planted_copies for _ in range(cfg.planted_per_level)]

    def pset(rows: list[list[int]], prefix: str, copies: list[int]) -> ParagraphSet:
        return ParagraphSet(
            torch.tensor(rows, dtype=torch.long), cfg.prefix_len, cfg.continuation_len,
            ids=[f"{prefix}-{i:05d}" for i in range(len(rows))],
            metadata={"copies": copies, "group": [prefix] * len(rows)},
        )

    return (
        pset(planted, "planted", copies),
        pset(background, "background", [1] * len(background)),
        pset(held, "held_out", [0] * len(held)),
    )


def training_order(planted: ParagraphSet, background: ParagraphSet, seed: int) -> torch.Tensor:
    """The token rows of the training stream: every background paragraph once and every planted
    paragraph ``copies`` times, shuffled: ``[steps * batch_size, length]``."""
    rows = [background.tokens]
    for i, c in enumerate(planted.copies.tolist()):
        rows.append(planted.tokens[i : i + 1].expand(c, -1))
    stream = torch.cat(rows)
    g = torch.Generator().manual_seed(seed)
    return stream[torch.randperm(stream.shape[0], generator=g)]
