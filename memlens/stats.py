"""Rank statistics without a SciPy dependency."""

from __future__ import annotations

from typing import Sequence

import torch


def rankdata(x: Sequence[float]) -> torch.Tensor:
    """Ranks 1..n with ties given their average rank."""
    t = torch.as_tensor(x, dtype=torch.float64)
    order = torch.argsort(t, stable=True)
    ranks = torch.empty_like(t)
    ranks[order] = torch.arange(1, len(t) + 1, dtype=torch.float64)
    for v in torch.unique(t):
        tie = t == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks); nan if a side is constant."""
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = (rx.norm() * ry.norm()).item()
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")
