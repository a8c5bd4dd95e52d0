from __future__ import annotations

import math

import pytest
import torch

from memlens.core.stats import kendall_tau, spearman


@pytest.mark.parametrize("seed", range(4))
def test_kendall_tau_matches_scipy(seed):
    scipy_stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 6, (30,), generator=g).tolist()  # ties on purpose
    y = torch.randn(30, generator=g).tolist()
    assert kendall_tau(x, y) == pytest.approx(scipy_stats.kendalltau(x, y).statistic, abs=1e-9)
    assert spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y).statistic, abs=1e-9)


def test_kendall_tau_extremes():
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3], [1, 5, 9]) == 1.0
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError):
        kendall_tau([1, 2], [1])
