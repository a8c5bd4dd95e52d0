"""duplication_profile: EM and NLL beside each paragraph's duplication count (Fig. 2 / 8)."""

from __future__ import annotations

import pytest
import torch

from memlens import InputError, ParagraphSet, greedy_decode, scan
from memlens.analyses.duplication import DuplicationResult, duplication_profile
from memlens.core.stats import spearman
from memlens.testing import random_tokens


def test_profile_of_a_scan_with_counts(neo, tmp_path):
    counts = [3, 0, "n/a", 12, 1, 7]
    tokens = random_tokens(6, 24, neo.vocab_size, seed=61)
    tokens[[0, 3, 5], 12:] = greedy_decode(neo, tokens[[0, 3, 5], :12], 12)  # recited: EM 12, the others ~0
    ps = ParagraphSet.from_tokens(tokens, prefix_len=12, count=counts)
    res = scan(neo, ps, progress=False)
    dup = duplication_profile(res)
    keep = [0, 1, 3, 4, 5]  # the non-numeric count is left out
    assert dup.count_column == "count" and dup.paragraph_ids == [ps.ids[i] for i in keep]
    assert dup.count.tolist() == [3.0, 0.0, 12.0, 1.0, 7.0] and dup.em.tolist() == res.em[keep].tolist()
    s = dup.summary()
    assert s["spearman_em_vs_count"] > 0  # the recited paragraphs have the larger counts here
    assert s["spearman_em_vs_count"] == pytest.approx(spearman(dup.count.tolist(), dup.em.tolist()), abs=1e-4)
    assert s["spearman_nll_vs_count"] == pytest.approx(spearman(dup.count.tolist(), dup.nll.tolist()), abs=1e-4)
    assert (s["count_min"], s["count_max"]) == (0.0, 12.0)
    by = dup.by_count()
    assert by["n"].sum() == 5 and by["count"].tolist() == [0.0, 1.0, 3.0, 7.0, 12.0]
    back = DuplicationResult.load(dup.save(tmp_path / "dup.safetensors"))
    assert back.paragraph_ids == dup.paragraph_ids and torch.equal(back.count, dup.count)
    fig = dup.plot()
    assert fig.data[0].x.tolist() == [3.0, 12.0, 1.0, 7.0]  # count 0 is off the log axis


def test_the_organisms_copies_column_and_bad_input(neo):
    ps = ParagraphSet.from_tokens(random_tokens(3, 24, neo.vocab_size, seed=62), prefix_len=12, copies=[1, 2, 4])
    res = scan(neo, ps, progress=False)
    assert duplication_profile(res).count_column == "copies"
    with pytest.raises(InputError, match="no duplication count column"):
        duplication_profile(res, count_column="count")
    bare = scan(neo, ParagraphSet.from_tokens(random_tokens(2, 24, neo.vocab_size, seed=63), prefix_len=12), progress=False)
    with pytest.raises(InputError, match="read_carlini_arrays"):
        duplication_profile(bare)
    junk = scan(neo, ParagraphSet.from_tokens(random_tokens(2, 24, neo.vocab_size, seed=64), prefix_len=12,
                                              count=["x", None]), progress=False)
    with pytest.raises(InputError, match="numeric"):
        duplication_profile(junk)
