"""Per-weight gradient scores (memlens/analyses/localization/weight_scores.py) and the weight-level
finding on planted ground truth (benchmarks/weight_recall.py on the tiny organism)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import memlens as ml
from memlens.analyses.injection import not_recited
from memlens.analyses.localization.weight_scores import (mask_jaccard, mask_recall, rank_one_scale, row_column_r2,
                                                         scale_normalized, top_weight_mask)


def test_rank_one_scale_is_exact_on_an_outer_product():
    row, col = torch.rand(2, 5, 1) + 0.1, torch.rand(2, 1, 7) + 0.1
    g = row * col * torch.where(torch.rand(2, 5, 7) < 0.5, -1.0, 1.0)
    torch.testing.assert_close(rank_one_scale(g), g.abs())
    torch.testing.assert_close(scale_normalized(g), torch.ones(2, 5, 7))
    assert row_column_r2(g) == pytest.approx(1.0)


def test_scale_normalized_finds_a_spike_that_the_raw_magnitude_misses():
    row, col = torch.logspace(0, 3, 6)[:, None], torch.ones(1, 6)
    g = (row * col).clone()
    g[0, 2] *= 20.0  # large for its row, still small against the largest rows
    raw_top = top_weight_mask({"w": g}, 1)["w"]
    normalized_top = top_weight_mask({"w": scale_normalized(g)}, 1)["w"]
    assert not raw_top[0, 2] and normalized_top[0, 2]
    assert row_column_r2(g) < 1.0


def test_row_column_r2_is_low_for_noise():
    g = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    assert row_column_r2(g) < 0.1


def test_top_weight_mask_counts_over_every_tensor():
    scores = {"a": torch.tensor([[1.0, 9.0], [3.0, 4.0]]), "b": torch.tensor([[8.0, 2.0, 7.0]])}
    top = top_weight_mask(scores, 3)
    assert sum(int(m.sum()) for m in top.values()) == 3
    assert top["a"].tolist() == [[False, True], [False, False]] and top["b"].tolist() == [[True, False, True]]
    with pytest.raises(ml.InputError, match="count must be in 1..7"):
        top_weight_mask(scores, 8)


def test_recall_and_jaccard():
    planted = {"w": torch.tensor([True, True, False, False])}
    found = {"w": torch.tensor([True, False, True, False])}
    assert mask_recall(found, planted) == 0.5
    assert mask_jaccard(found, planted) == pytest.approx(1 / 3)
    with pytest.raises(ml.InputError, match="different weights"):
        mask_recall({"v": found["w"]}, planted)


def _benchmark():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "weight_recall.py"
    spec = importlib.util.spec_from_file_location("benchmark_weight_recall", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_planted_single_weights_are_not_where_the_gradient_is_largest(organism):
    """Ground truth: paragraphs injected through 1% of the single weights. Before the injection the
    gradient cannot know the planted weights (mean |g| there equals elsewhere); after it, the
    gradient there is *smaller* than elsewhere (the injection optimized those weights for these
    paragraphs), so the paper's top-k |gradient| recovers no more of them than random does."""
    truth = organism.ground_truth
    res = ml.scan(organism, truth.paragraph_set(), progress=False)
    pool = not_recited(organism, truth.held_out)
    before = [p.detach().clone() for p in organism.tl_model.parameters()]
    row = _benchmark().one_seed(ml, organism, pool, res.non_memorized(), 0.01, 1, 0)
    assert all(torch.equal(a, b) for a, b in zip(before, organism.tl_model.parameters()))
    assert row["memorized_after_injection"] == 1.0
    assert 0.9 < row["planted_gradient_ratio_before"] < 1.1
    assert row["planted_gradient_ratio_after"] < row["planted_gradient_ratio_before"] - 0.05
    assert row["recall"]["gradient"] < 0.02 and row["recall"]["random"] < 0.02
    assert row["planted"] > 0 and 0.0 <= row["jaccard_top_before_after"] < 1.0
