"""Activation patching: exact patching through hooks equals a manual re-computation, attribution
patching approximates it, and bad pairs get clear errors."""

from __future__ import annotations

import pytest
import torch

from memlens import InputError, ParagraphSet
from memlens.analyses.patching import PatchPair, attribution_patching, exact_patching, make_patch_pairs
from memlens.testing import hand_patched_nll_change, random_tokens


def _pair(model, P: int = 10, seed: int = 0) -> PatchPair:
    toks = random_tokens(1, P + 1, model.vocab_size, seed=seed)[0]
    corrupt = toks[:P].clone()
    corrupt[3] = (corrupt[3] + 7) % model.vocab_size
    return PatchPair("p0", toks[:P].clone(), corrupt, int(toks[P]), 0)


def _manual_noising(model, pair: PatchPair, layer: int, head: int, position: int | list[int] | None) -> float:
    """Patch head ``head``'s slice of the out-projection input (= its z) in the plain HF twin,
    without any TransformerLens hook, and return NLL(patched) - NLL(clean)."""
    plain = model.plain_model()
    return hand_patched_nll_change(plain, plain.transformer.h[layer].attn.attention.out_proj, pair, head,
                                   model.d_head, position)


def test_exact_patching_equals_manual_recomputation(neo):
    pair = _pair(neo)
    res = exact_patching(neo, pair, kinds=("z",))
    per_pos = exact_patching(neo, pair, kinds=("z",), per_position=True, batch_size=7)
    for layer in range(neo.n_layers):
        for head in range(neo.n_heads):
            assert res.noising[layer, 0, head] == pytest.approx(_manual_noising(neo, pair, layer, head, None), abs=1e-4)
    for layer, head, pos in [(0, 1, 3), (1, 2, 5), (1, 0, 9)]:
        assert per_pos.noising[layer, 0, head, pos] == pytest.approx(_manual_noising(neo, pair, layer, head, pos), abs=1e-4)
    # patching before the perturbed position changes nothing: activations there are identical
    assert per_pos.noising[0, 0, :, :3].abs().max() < 1e-5
    assert res.noising.abs().max() > 1e-3


def test_patching_only_some_positions_equals_manual_recomputation(neo):
    """Appendix A.3: a head patched only at the perturbed position, or at a range of positions at
    once (the code's 40-49), equals a hand-patched forward; per position, unlisted cells are NaN."""
    pair = _pair(neo)
    at = exact_patching(neo, pair, kinds=("z",), positions="perturbed")
    span = exact_patching(neo, pair, kinds=("z",), positions=[3, 5, 7])
    cells = exact_patching(neo, pair, kinds=("z",), per_position=True, positions=[3, 6])
    for layer, head in [(0, 1), (1, 2), (1, 3)]:
        assert at.noising[layer, 0, head] == pytest.approx(_manual_noising(neo, pair, layer, head, 3), abs=1e-4)
        assert span.noising[layer, 0, head] == pytest.approx(_manual_noising(neo, pair, layer, head, [3, 5, 7]), abs=1e-4)
        assert cells.noising[layer, 0, head, 6] == pytest.approx(_manual_noising(neo, pair, layer, head, 6), abs=1e-4)
    assert torch.isnan(cells.noising[:, :, :, [0, 1, 2, 4, 5, 7, 8, 9]]).all()
    assert at.provenance.config["positions"] == [3]
    with pytest.raises(InputError, match="0..9"):
        exact_patching(neo, pair, kinds=("z",), positions=[10])
    with pytest.raises(InputError, match="perturbed"):
        exact_patching(neo, pair, kinds=("z",), positions="first")


def test_a_patching_metric_given_as_a_callable(neo):
    """TransformerLens's patching_metric convention: logits -> one number per run."""
    pair = _pair(neo, seed=2)

    def target_logit(logits):
        return logits[:, -1, pair.target]

    res = exact_patching(neo, pair, kinds=("z",), metric=target_logit)
    with torch.no_grad():
        clean = float(neo(pair.clean[None])[0, -1, pair.target])
    assert res.clean_nll == pytest.approx(clean, abs=1e-4) and res.provenance.config["metric"] == "target_logit"
    default = exact_patching(neo, pair, kinds=("z",))
    assert not torch.allclose(res.noising, default.noising)
    with pytest.raises(InputError, match="one number per run"):
        exact_patching(neo, pair, kinds=("z",), metric=lambda logits: logits.sum())


def test_attribution_patching_takes_the_same_metric_callable(neo):
    """attribution_patching estimates exact_patching under the caller's metric, not only the
    paper's: its clean value is that metric's, and it ranks heads as exact patching with the same
    metric does."""
    from memlens.core.stats import spearman

    exact, attr = [], []
    for s in range(3):
        pair = _pair(neo, seed=s)

        def target_logit(logits, pair=pair):
            return logits[:, -1, pair.target]

        e = exact_patching(neo, pair, kinds=("z", "v"), metric=target_logit)
        a = attribution_patching(neo, pair, kinds=("z", "v"), metric=target_logit)
        assert a.clean_nll == pytest.approx(e.clean_nll, abs=1e-4) and a.provenance.config["metric"] == "target_logit"
        exact.append(e.noising.flatten())
        attr.append(a.noising.flatten())
    assert spearman(torch.cat(exact).tolist(), torch.cat(attr).tolist()) > 0.6
    default = attribution_patching(neo, _pair(neo, seed=0), kinds=("z",))
    assert not torch.allclose(default.noising, attribution_patching(neo, _pair(neo, seed=0), kinds=("z",),
                                                                     metric=lambda lg: lg[:, -1, 0]).noising)
    with pytest.raises(InputError, match="one number per run"):
        attribution_patching(neo, _pair(neo), kinds=("z",), metric=lambda logits: logits[0].sum(-1))


def test_patching_directions_and_shapes(neo):
    pair = _pair(neo, seed=1)
    res = exact_patching(neo, pair)
    assert res.noising.shape == (neo.n_layers, 4, neo.n_heads)
    # patching every head's z of the last layer together is the whole attention output, but one
    # head at a time: denoising effects are bounded by the total effect's scale
    total = res.corrupt_nll - res.clean_nll
    assert torch.isfinite(res.denoising).all() and abs(total) < 1e3


def test_attribution_matches_exact_in_sign_and_rank(neo):
    from memlens.core.stats import spearman

    exact, attr = [], []
    for s in range(3):
        pair = _pair(neo, seed=s)
        exact.append(exact_patching(neo, pair, kinds=("z", "v")).noising.flatten())
        attr.append(attribution_patching(neo, pair, kinds=("z", "v")).noising.flatten())
    rho = spearman(torch.cat(exact).tolist(), torch.cat(attr).tolist())
    assert rho > 0.6


def test_attribution_is_zero_without_a_difference(neo):
    pair = _pair(neo)
    same = PatchPair("p", pair.clean, pair.clean.clone(), pair.target, 0)
    res = attribution_patching(neo, same, per_position=True)
    assert res.noising.shape == (neo.n_layers, 4, neo.n_heads, same.length)
    assert res.noising.abs().max() == 0 and res.denoising.abs().max() == 0


def _sets(model):
    toks = random_tokens(3, 20, model.vocab_size, seed=4)
    clean = ParagraphSet.from_tokens(toks, prefix_len=10)
    pert = toks.clone()
    pert[:, 4] = (pert[:, 4] + 1) % model.vocab_size
    pert[:, 13:] = (pert[:, 13:] + 1) % model.vocab_size  # continuation changes at index 3
    return clean, ParagraphSet.from_tokens(pert, prefix_len=10)


def test_make_patch_pairs_cuts_before_first_changed_token(neo):
    clean, pert = _sets(neo)
    pairs = make_patch_pairs(clean, pert)
    assert [p.continuation_index for p in pairs] == [3, 3, 3]
    assert pairs[0].length == 13 and pairs[0].target == int(clean.tokens[0, 13])
    assert (pairs[0].clean != pairs[0].corrupt).sum() == 1


def test_make_patch_pairs_errors(neo):
    clean, pert = _sets(neo)
    with pytest.raises(InputError, match="differ in length"):
        make_patch_pairs(clean, ParagraphSet.from_tokens(pert.tokens, prefix_len=8))
    with pytest.raises(InputError, match="2 perturbed paragraphs for 3"):
        make_patch_pairs(clean, pert[:2])
    with pytest.raises(InputError, match="same prefix"):
        make_patch_pairs(clean, clean)
    tagged = ParagraphSet.from_tokens(pert.tokens, prefix_len=10, original=["0", "1", "nope"])
    with pytest.raises(InputError, match="'nope'"):
        make_patch_pairs(clean, tagged)
    unchanged = clean.tokens.clone()
    unchanged[:, 4] = (unchanged[:, 4] + 1) % neo.vocab_size
    with pytest.raises(InputError, match="changes its continuation"), pytest.warns(UserWarning, match="keep the original"):
        make_patch_pairs(clean, ParagraphSet.from_tokens(unchanged, prefix_len=10))


def test_grouped_query_key_value_heads_are_patched_once(monkeypatch):
    """Llama with 4 query and 2 key/value heads: each kv head is patched once (not once per
    query head reading it) and its effect is shown for both query heads of its group."""
    from memlens.testing import random_model

    model = random_model("llama", seed=3)
    pair = _pair(model)
    reference = exact_patching(model, pair, kinds=("q", "k", "v"))
    rows = []
    forward = type(model).forward
    monkeypatch.setattr(type(model), "forward", lambda self, tokens, **kw: rows.append(len(tokens)) or forward(self, tokens, **kw))
    res = exact_patching(model, pair, kinds=("q", "k", "v"), batch_size=4)
    n_kv = model.hf_model.config.num_key_value_heads
    assert n_kv == 2 and model.n_heads == 4
    # the clean and corrupt runs, then per direction one row per q head and per k/v head
    assert sum(rows) == 2 + 2 * model.n_layers * (model.n_heads + 2 * n_kv)
    for ki in (1, 2):  # k, v: heads 0/1 share kv head 0, heads 2/3 kv head 1
        eff = res.noising[:, ki]
        assert torch.equal(eff[:, 0], eff[:, 1]) and torch.equal(eff[:, 2], eff[:, 3])
    torch.testing.assert_close(res.noising, reference.noising)
    assert res.noising[:, 0].abs().max() > 0  # q heads are patched one by one and do differ
