"""Injection changes nothing outside the named components and plants the paragraphs there."""

import pytest
import torch

from memlens import InputError, scan
from memlens.analyses.injection import inject


def test_inject_into_an_mlp(restored):
    model = restored
    targets = model.ground_truth.held_out[:2]
    before = {n: p.detach().clone() for n, p in model.tl_model.named_parameters()}
    sites = [(1, "W_in"), (1, "W_out")]
    res = inject(model, targets, sites, steps=300, lr=3e-3, progress=False)
    assert res.em_before.max() < 30
    assert res.success_rate == 1.0, f"EM after injection: {res.em_after.tolist()}"
    assert scan(model, targets, progress=False).em.tolist() == [50, 50]
    owned = {id(s.param): s for k in sites for s in model.components[k].slices}
    changed_outside = 0
    for n, p in model.tl_model.named_parameters():
        diff = p.detach() != before[n]
        if id(p) in owned:
            inside = torch.zeros_like(diff)
            owned[id(p)].of(inside).fill_(True)
            changed_outside += int((diff & ~inside).sum())
        else:
            changed_outside += int(diff.sum())
    assert changed_outside == 0
    assert 0 < res.weights_changed <= sum(model.components[k].numel for k in sites)


def test_inject_into_one_head_reports_partial_success(restored):
    model = restored
    targets = model.ground_truth.held_out[2:4]
    res = inject(model, targets, [(0, "W_V", 1)], steps=30, lr=1e-3, progress=False)
    assert res.steps == 30 and 0.0 <= res.success_rate <= 1.0
    assert res.weights_changed <= model.components[(0, "W_V", 1)].numel


def test_inject_bad_input(restored):
    with pytest.raises(InputError, match="at least one component"):
        inject(restored, restored.ground_truth.held_out[:1], [])
    with pytest.raises(InputError, match="unknown component kind"):
        inject(restored, restored.ground_truth.held_out[:1], [(0, "W_X", 0)])
