"""Rank statistics without a SciPy dependency."""

from __future__ import annotations

from typing import Sequence, Union

import torch


Numbers = Union[Sequence[float], Sequence[int], torch.Tensor]
"""Numbers given as a list, a range or a 1-D tensor."""


def rankdata(x: Numbers) -> torch.Tensor:
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


def spearman(x: Numbers, y: Numbers) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks); nan if a side is constant."""
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = (rx.norm() * ry.norm()).item()
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def kendall_tau(x: Numbers, y: Numbers) -> float:
    """Kendall's tau-b (ties counted on both sides); nan if a side is constant. O(n^2), meant for
    the short sequences of this package (prefix tokens, heads)."""
    a = torch.as_tensor(x, dtype=torch.float64)
    b = torch.as_tensor(y, dtype=torch.float64)
    if a.shape != b.shape or a.dim() != 1:
        raise ValueError(f"kendall_tau needs two 1-D sequences of the same length, got {tuple(a.shape)} and {tuple(b.shape)}")
    da = torch.sign(a[:, None] - a[None, :])
    db = torch.sign(b[:, None] - b[None, :])
    upper = torch.triu(torch.ones_like(da, dtype=torch.bool), diagonal=1)
    s = (da * db)[upper].sum()
    na, nb = (da[upper] != 0).sum(), (db[upper] != 0).sum()
    denom = float((na * nb).double().sqrt())
    return float(s / denom) if denom > 0 else float("nan")


def bootstrap_mean_ci(x: Numbers, level: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``x`` at confidence ``level`` (resampling
    with replacement, ``n_resamples`` times, seeded); (nan, nan) for an empty sample, (x, x) for one
    value. NaNs are left out."""
    t = torch.as_tensor(x, dtype=torch.float64).flatten()
    t = t[~torch.isnan(t)]
    if t.numel() == 0:
        return float("nan"), float("nan")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, t.numel(), (n_resamples, t.numel()), generator=g)
    means = t[idx].mean(dim=1)
    alpha = (1 - level) / 2
    lo, hi = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return float(lo), float(hi)
