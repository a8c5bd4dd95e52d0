"""HeadLocalizer against causal ground truth on the organism: head ablation, and a head that
paragraphs were injected through."""

from __future__ import annotations

import pytest

from memlens import scan
from memlens.analyses.head_ablation import head_ablation_em_drop
from memlens.analyses.heads import HeadLocalizer
from memlens.analyses.injection import inject


@pytest.fixture(scope="module")
def splits(organism):
    res = scan(organism, organism.ground_truth.paragraph_set(n_background=32, n_held_out=0), progress=False)
    mem, non = res.memorized(), res.non_memorized()
    assert len(mem) >= 4
    return mem, non[:16]


def test_the_most_costly_head_to_ablate_ranks_in_the_top_3(organism, splits):
    mem, non = splits
    drop = head_ablation_em_drop(organism, mem, progress=False)
    layer, head = drop.top_head()
    assert drop.drop(layer, head) > 5  # ablating it really costs the memorized paragraphs
    assert drop.to_dataframe().iloc[0][["layer", "head"]].tolist() == [layer, head]
    report = HeadLocalizer(organism).localize(mem, non, progress=False)
    assert report.where(layer, head)["combined"] <= 3, report.evidence_text(layer, head)
    assert report.agreement["z_noising"] > 0.5  # attribution tracks exact patching here


def test_a_head_paragraphs_were_injected_through_ranks_first(restored):
    model = restored
    targets = model.ground_truth.held_out[:4]
    res = inject(model, targets, [(0, k, 1) for k in ("W_Q", "W_K", "W_V", "W_O")], steps=400, lr=3e-3, progress=False)
    assert res.success_rate == 1.0, res.em_after.tolist()
    report = HeadLocalizer(model).localize(targets, evidence=["gradient", "activation_gradient", "patching"], progress=False)
    ranks = report.where(0, 1)
    assert ranks["combined"] <= 3, report.evidence_text(0, 1)
    assert ranks["gradient"] == 1
