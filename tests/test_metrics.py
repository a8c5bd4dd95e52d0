import pytest
import torch

from memlens import InputError, greedy_decode, teacher_forced_scores
from memlens.core.metrics import exact_match, generate_then_score, score_logits
from memlens.testing import random_tokens


def _with_greedy_prefix(model, tokens, prefix_len, keep):
    """Paragraphs whose continuation follows greedy decoding for ``keep`` tokens, then diverges:
    a ground truth EM of exactly ``keep`` when the next true token is not the argmax."""
    gen = greedy_decode(model, tokens[:, :prefix_len], tokens.shape[1] - prefix_len)
    out = tokens.clone()
    out[:, prefix_len : prefix_len + keep] = gen[:, :keep]
    # force a mismatch right after
    out[:, prefix_len + keep] = (gen[:, keep] + 1) % model.vocab_size
    return out


def test_teacher_forced_em_equals_greedy_em(any_model):
    tokens = random_tokens(6, 40, any_model.vocab_size, seed=5)
    mixed = torch.cat([_with_greedy_prefix(any_model, tokens, 20, k) for k in (0, 3, 11)])
    scores = teacher_forced_scores(any_model, mixed, 20, batch_size=4)
    ref_em, ref_nll = generate_then_score(any_model, mixed, 20)
    assert scores.em.tolist() == ref_em.tolist()
    assert sorted(set(scores.em.tolist())) == [0, 3, 11]
    torch.testing.assert_close(scores.nll, ref_nll, atol=1e-4, rtol=1e-4)


def test_teacher_forced_em_on_perturbed_prefixes(any_model):
    """A perturbed prefix changes the greedy continuation; teacher forcing of the ORIGINAL
    continuation after the perturbed prefix still gives exactly the greedy EM."""
    base = random_tokens(3, 40, any_model.vocab_size, seed=9)
    full = torch.cat([base[:, :20], greedy_decode(any_model, base[:, :20], 20)], 1)  # EM 20 paragraphs
    perturbed = full.repeat_interleave(5, 0).clone()
    g = torch.Generator().manual_seed(0)
    pos = torch.randint(0, 20, (perturbed.shape[0],), generator=g)
    perturbed[torch.arange(len(pos)), pos] = torch.randint(1, any_model.vocab_size, (len(pos),), generator=g)
    tf = teacher_forced_scores(any_model, perturbed, 20).em
    greedy = exact_match(greedy_decode(any_model, perturbed[:, :20], 20), perturbed[:, 20:])
    assert tf.tolist() == greedy.tolist()
    assert teacher_forced_scores(any_model, full, 20).em.tolist() == [20, 20, 20]


def test_cached_decoding_equals_full_recompute(any_model):
    prefixes = random_tokens(5, 16, any_model.vocab_size, seed=2)
    fast = greedy_decode(any_model, prefixes, 24, use_cache=True)
    slow = greedy_decode(any_model, prefixes, 24, use_cache=False)
    assert torch.equal(fast, slow)
    # and the bridge (hooks path) agrees: its argmax after prefix + fast[:k] is fast[k]
    seq = torch.cat([prefixes, fast], 1)
    assert torch.equal(any_model(seq[:, :-1])[:, 15:].argmax(-1), fast)


def test_left_padding_changes_nothing(any_model):
    t = random_tokens(3, 30, any_model.vocab_size, seed=4)
    rows = [t[0, :30], t[1, :12], t[2, :5]]
    batched = greedy_decode(any_model, rows, 10)
    one_by_one = torch.cat([greedy_decode(any_model, [r], 10) for r in rows])
    assert torch.equal(batched, one_by_one)


def test_min_k_and_token_nll():
    logits = torch.zeros(1, 4, 10)
    logits[0, torch.arange(4), torch.tensor([1, 2, 3, 4])] = 5.0
    targets = torch.tensor([[1, 2, 9, 4]])
    s = score_logits(logits, targets, min_k=0.25)
    assert s.em.tolist() == [2]
    assert s.token_nll.shape == (1, 4)
    assert s.min_k_nll.item() == pytest.approx(s.token_nll.max().item())
    assert s.nll.item() == pytest.approx(s.token_nll.mean().item())
    with pytest.raises(InputError, match="min_k"):
        score_logits(logits, targets, min_k=1.5)


def test_ties_resolve_to_lowest_token_id():
    logits = torch.zeros(1, 2, 5)  # all tied: argmax is token 0
    assert score_logits(logits, torch.tensor([[0, 1]])).em.tolist() == [1]


def test_top1_and_margins():
    """Margin = log p(target) - max log p(other): +1 nat where the target leads, -3 where it trails."""
    logits = torch.tensor([[[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]]])
    s = score_logits(logits, torch.tensor([[0, 1]]), predictions=True)
    assert s.top1.tolist() == [[0, 2]]
    assert s.margin.tolist()[0] == pytest.approx([1.0, -3.0], abs=1e-6)
    assert score_logits(logits, torch.tensor([[0, 1]])).margin is None


def test_paragraph_min_k_nll_is_the_codes(neo):
    """The code: NLL of every predicted position (99 of 100), the top int(0.2 * 99) = 19, averaged."""
    import torch.nn.functional as F

    from memlens.core.metrics import paragraph_min_k_nll
    from memlens.testing import random_tokens

    toks = random_tokens(3, 100, neo.vocab_size, seed=5)
    got = paragraph_min_k_nll(neo, toks, batch_size=2)
    logits = neo(toks[:, :-1])
    nll = F.cross_entropy(logits.transpose(1, 2), toks[:, 1:], reduction="none")
    expected = nll.topk(19, dim=-1).values.mean(-1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got > nll.mean(-1)).all()
