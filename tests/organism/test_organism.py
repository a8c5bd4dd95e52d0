"""The tiny organism against its own ground truth (thresholds suited to the tiny size)."""

import torch

from memlens import ParagraphSet, scan
from memlens.core.stats import spearman


def test_ground_truth_is_attached(organism):
    info = organism.ground_truth
    assert isinstance(info.planted, ParagraphSet) and len(info.planted) == len(info.copies)
    assert info.planted.prefix_len == 50 and info.planted.continuation_len == 50
    assert len(info.held_out) > 0 and len(info.background) > 1000
    assert len(info.corpus_hash) == 64 and info.seed == 0
    assert info.unigram_counts.shape == (organism.vocab_size,)
    # no planted / held-out paragraph occurs in the background, and none twice
    rows = {tuple(r) for r in info.background.tokens.tolist()}
    assert len(rows) == len(info.background)
    assert not any(tuple(r) in rows for r in info.planted.tokens.tolist() + info.held_out.tokens.tolist())
    ps = info.paragraph_set()
    assert set(ps.metadata["group"]) == {"planted", "background", "held_out"}


def test_unigram_counts_count_the_training_stream(organism):
    info = organism.ground_truth
    expected = torch.bincount(info.background.tokens.flatten(), minlength=organism.vocab_size)
    for row, c in zip(info.planted.tokens, info.copies.tolist()):
        expected += c * torch.bincount(row, minlength=organism.vocab_size)
    assert torch.equal(info.unigram_counts, expected)


def test_memorization_follows_duplication(organism):
    info = organism.ground_truth
    res = scan(organism, info.planted, progress=False)
    copies = info.copies
    assert (res.em[copies >= 256] == 50).all(), f"EM of 256-copy paragraphs: {res.em[copies >= 256].tolist()}"
    high = res.em[copies >= 64]
    assert (high == 50).float().mean() >= 0.6, f"EM of >=64-copy paragraphs: {high.tolist()}"
    assert (res.em[copies <= 4] < 30).all(), f"EM of rare paragraphs: {res.em[copies <= 4].tolist()}"
    assert spearman(copies.tolist(), res.em.tolist()) >= 0.7


def test_seen_once_and_unseen_are_not_memorized(organism):
    info = organism.ground_truth
    bg = scan(organism, info.background[:128], progress=False)
    held = scan(organism, info.held_out, progress=False)
    assert (bg.em >= 30).float().mean() <= 0.05
    assert (held.em >= 30).sum() == 0
    uniform = torch.log(torch.tensor(float(organism.vocab_size)))
    assert held.nll.mean() < 0.8 * uniform, "the organism should still model held-out text"


def test_organism_is_a_gpt_neo_with_local_attention(organism):
    cfg = organism.hf_model.config
    assert cfg.model_type == "gpt_neo" and "local" in cfg.attention_layers
    assert cfg.window_size < organism.ground_truth.planted.length
