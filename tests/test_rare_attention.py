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
