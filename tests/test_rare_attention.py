from __future__ import annotations

import pytest
import torch

from memlens import InputError, ParagraphSet
from memlens.analyses.frequency import UnigramCounts
from memlens.analyses.rare_attention import attention_to_prefix, rare_token_attention
from memlens.core.stats import kendall_tau
from memlens.testing import random_tokens


def test_attention_to_prefix_reads_the_pattern(any_model):
    paras = ParagraphSet.from_tokens(random_tokens(3, 16, any_model.vocab_size), prefix_len=10)
    attn = attention_to_prefix(any_model, paras, progress=False)
    assert attn.shape == (3, any_model.n_layers, any_model.n_heads, 10)
    mass = attn.sum(-1)
    assert (mass <= 1 + 1e-5).all() and (mass > 0).all()
    _, cache = any_model.run_with_cache(paras.tokens[:, :11], "blocks.1.attn.hook_pattern")
    assert torch.allclose(attn[:, 1], cache["blocks.1.attn.hook_pattern"][:, :, 10, :10], atol=1e-6)


def test_rank_curve_and_tau(neo):
    paras = ParagraphSet.from_tokens(random_tokens(4, 16, neo.vocab_size, seed=2), prefix_len=10)
    counts = UnigramCounts(torch.arange(neo.vocab_size) % 97)
    res = rare_token_attention(neo, paras, counts, progress=False)
    # by_rank redistributes each paragraph's prefix attention over ranks: the mass is unchanged
    assert torch.allclose(res.by_rank.sum(-1), res.attention.sum(-1).mean(0), atol=1e-5)
    assert res.rank_tau[0, 1] == pytest.approx(kendall_tau(range(10), res.by_rank[0, 1].tolist()))
    assert ((res.token_tau >= -1) & (res.token_tau <= 1)).all()


def test_query_position_must_be_in_the_continuation(neo):
    paras = ParagraphSet.from_tokens(random_tokens(2, 16, neo.vocab_size), prefix_len=10)
    with pytest.raises(InputError, match="query_position"):
        attention_to_prefix(neo, paras, query_position=4)
    with pytest.raises(InputError, match="unigram counts cover"):
        rare_token_attention(neo, paras, UnigramCounts(torch.ones(5, dtype=torch.long)))


def test_dense_ranks_and_summed_attention_as_the_paper_computes_them(neo):
    """Dense ranks equal scipy's rankdata(method="dense") - 1; summed attention is the mean times
    the paragraphs; the entropy lies between 0 and log(prefix length)."""
    from scipy.stats import rankdata

    counts = UnigramCounts(torch.arange(neo.vocab_size) % 7)  # many ties
    toks = random_tokens(1, 10, neo.vocab_size, seed=4)[0]
    expected = rankdata(counts.of(toks).numpy(), method="dense") - 1
    assert counts.rarity_rank(toks, ties="dense").tolist() == expected.tolist()
    assert sorted(counts.rarity_rank(toks).tolist()) == list(range(10))  # ordinal: a permutation
    paras = ParagraphSet.from_tokens(random_tokens(5, 16, neo.vocab_size, seed=6), prefix_len=10)
    mean = rare_token_attention(neo, paras, counts, ranks="dense", progress=False)
    summed = rare_token_attention(neo, paras, counts, ranks="dense", reduce="sum", progress=False)
    torch.testing.assert_close(summed.by_rank, 5 * mean.by_rank)
    # hand-made: sum each prefix position's attention into its dense rank
    by_hand = torch.zeros(10)
    for i in range(5):
        for p, r in enumerate(counts.rarity_rank(paras.prefixes[i], ties="dense").tolist()):
            by_hand[r] += summed.attention[i, 1, 2, p]
    torch.testing.assert_close(summed.by_rank[1, 2], by_hand)
    assert ((summed.entropy >= 0) & (summed.entropy <= torch.log(torch.tensor(10.0)) + 1e-5)).all()
    assert summed.ranks == "dense" and summed.to_dataframe()["entropy"].notna().all()


def test_token_level_tau_by_counts_matches_scipy(neo):
    from scipy.stats import kendalltau

    from memlens.analyses.rare_attention import paper_rare_token_setup

    mem = ParagraphSet.from_tokens(random_tokens(3, 16, 50, seed=7), prefix_len=10)
    non = ParagraphSet.from_tokens(random_tokens(3, 16, 50, seed=8), prefix_len=10, ids=["a", "b", "c"])
    paras, counts = paper_rare_token_setup(mem, non, neo.vocab_size, n=5)
    assert paras.ids == ["0", "1", "2", "a", "b"] and counts.total == 6 * 16
    res = rare_token_attention(neo, paras, counts, ranks="dense", reduce="sum", progress=False)
    mem_counts = UnigramCounts.from_paragraphs(mem, neo.vocab_size)
    df = res.token_tau_by_counts(paras, {"full": counts, "memorized": mem_counts}).set_index(["layer", "head"])
    toks = paras.prefixes.flatten()
    summed = {}
    for t, a in zip(toks.tolist(), res.attention[:, 0, 3].flatten().tolist()):
        summed[t] = summed.get(t, 0.0) + a
    ids = sorted(t for t in summed if mem_counts.counts[t] > 0)
    expected = kendalltau([int(mem_counts.counts[t]) for t in ids], [summed[t] for t in ids]).statistic
    assert df.loc[(0, 3), "tau_memorized"] == pytest.approx(expected, abs=1e-9)
