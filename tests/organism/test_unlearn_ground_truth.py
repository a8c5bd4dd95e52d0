"""SparseFineTuner on the tiny organism: a top-0.1% mask unlearns, a random one of the same size does not."""

from memlens import scan
from memlens import compare_masks


def test_topk_unlearns_where_random_does_not(organism):
    info = organism.ground_truth
    res = scan(organism, info.paragraph_set(n_background=32, n_held_out=0), progress=False)
    mem, non = res.memorized(), res.non_memorized()[:16]
    df = compare_masks(organism, mem[:3], non, other_memorized=mem, masks=("topk", "random"), progress=False).to_dataframe()
    top = df[df["mask"] == "topk"].iloc[0]
    rnd = df[df["mask"] == "random"].iloc[0]
    assert top["mask_size"] == rnd["mask_size"] and top["weights_changed"] <= top["mask_size"]
    assert rnd["target_em_after"] >= 45, "a random 0.1% mask should leave the targets recited"
    assert top["target_em_after"] <= rnd["target_em_after"] - 15
    assert top["other_memorized_em_after"] >= 45, "other memorized paragraphs should survive"
    # restored between runs: the organism still recites its targets
    assert scan(organism, mem[:3], progress=False).em.tolist() == [50, 50, 50]


def test_selective_mask_spares_the_retain_set(organism):
    """The retain-aware mask (same size) unlearns far more than random while moving the retain
    set's top-1 tokens about as little as random does, where plain top-k moves many."""
    info = organism.ground_truth
    res = scan(organism, info.paragraph_set(n_background=32, n_held_out=0), progress=False)
    mem, non = res.memorized(), res.non_memorized()[:16]
    df = compare_masks(organism, mem[:3], non, other_memorized=mem, masks=("topk", "selective", "random"),
                       lr=3e-3, progress=False).to_dataframe().set_index("mask")
    top, sel, rnd = df.loc["topk"], df.loc["selective"], df.loc["random"]
    assert sel["mask_size"] == rnd["mask_size"] == top["mask_size"]
    assert sel["target_em_after"] <= rnd["target_em_after"] - 20
    assert sel["retain_top1_changed"] <= top["retain_top1_changed"] / 3
    assert sel["retain_em_after"] >= top["retain_em_after"] + 10
    assert sel["other_memorized_em_after"] >= 45
