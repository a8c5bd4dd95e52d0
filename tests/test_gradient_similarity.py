"""GradientSimilarity against a hand-computed cosine on tiny random models."""

from __future__ import annotations

import pytest
import torch

from memlens import InputError, ParagraphSet
from memlens.analyses.gradient_similarity import GradientSimilarity, GradientSimilarityResult
from memlens.core.objectives import continuation_nll
from memlens.testing import random_tokens


def _hand_gradient(model, ps: ParagraphSet) -> dict[str, torch.Tensor]:
    params = {sl.param_name: sl.param for c in model.components for sl in c.slices}
    for p in params.values():
        p.grad = None
    continuation_nll(model, ps.tokens, ps.prefix_len).backward()
    out = {n: p.grad.detach().clone() for n, p in params.items()}
    for p in model.tl_model.parameters():
        p.grad = None
    return out


def test_cosine_equals_a_hand_computation(any_model, tmp_path):
    model = any_model
    a = ParagraphSet.from_tokens(random_tokens(3, 20, model.vocab_size, seed=51), prefix_len=10)
    b = ParagraphSet.from_tokens(random_tokens(4, 20, model.vocab_size, seed=52), prefix_len=10)
    res = GradientSimilarity(model, batch_size=2).compute(a, b, progress=False)
    ga, gb = _hand_gradient(model, a), _hand_gradient(model, b)
    assert len(res.keys) == len(model.components)
    for comp, cos in zip(model.components, res.cosine.tolist()):
        va = torch.cat([sl.of(ga[sl.param_name]).flatten() for sl in comp.slices])
        vb = torch.cat([sl.of(gb[sl.param_name]).flatten() for sl in comp.slices])
        assert cos == pytest.approx(float(torch.nn.functional.cosine_similarity(va, vb, dim=0)), abs=1e-4)
    assert bool((res.cosine.abs() <= 1 + 1e-5).all())
    same = GradientSimilarity(model).compute(a, a, progress=False)
    assert torch.allclose(same.cosine, torch.ones_like(same.cosine), atol=1e-4)  # a set against itself
    back = GradientSimilarityResult.load(res.save(tmp_path / "sim.safetensors"))
    assert back.keys == res.keys and torch.equal(back.cosine, res.cosine)
    assert res.grid("W_Q").shape == (model.n_layers, model.n_heads) and res.grid("W_in").shape == (model.n_layers, 1)
    assert set(res.summary()["mean_by_kind"]) == {"W_Q", "W_K", "W_V", "W_O", "W_in", "W_out"}
    assert len(res.plot().data) == 5


def test_bad_input(neo):
    a = ParagraphSet.from_tokens(random_tokens(2, 20, neo.vocab_size, seed=1), prefix_len=10)
    b = ParagraphSet.from_tokens(random_tokens(2, 24, neo.vocab_size, seed=2), prefix_len=12)
    with pytest.raises(InputError):
        GradientSimilarity(neo).compute(a, b, progress=False)
    with pytest.raises(InputError, match="need paragraphs"):
        GradientSimilarity(neo).compute(a, a[[]], progress=False)
