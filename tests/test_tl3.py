"""TransformerLens 3 HookedTransformer through the same protocol (SAELens users pin TL < 4).

Runs where TL 3 is installed (CI runs this file in a second environment with transformer-lens
3.9); in a TL 4 environment it is skipped with that reason.
"""

import pytest
import torch

tl = pytest.importorskip("transformer_lens")
try:
    from transformer_lens import HookedTransformer, HookedTransformerConfig
except ImportError:
    pytest.skip("TransformerLens 3 is not installed here (TL 4 removed HookedTransformer)", allow_module_level=True)

from memlens import HookedModel, ParagraphSet, greedy_decode, scan
from memlens.testing import random_tokens, tiny_tokenizer


@pytest.fixture(scope="module")
def tl3_model():
    cfg = HookedTransformerConfig(n_layers=2, d_model=64, n_ctx=128, d_head=16, n_heads=4, d_mlp=256,
                                  d_vocab=512, act_fn="gelu", normalization_type="LN", seed=0)
    ht = HookedTransformer(cfg)
    with torch.no_grad():
        ht.unembed.W_U.mul_(8.0)
    return HookedModel.wrap(ht, tokenizer=tiny_tokenizer())


def test_protocol(tl3_model):
    m = tl3_model
    assert m.hf_model is None and m.model_type == "tl3"
    assert (m.n_layers, m.n_heads, m.d_head) == (2, 4, 16)
    toks = m.to_tokens("def f(x): return x")
    assert m(toks).shape == (1, toks.shape[1], 512)
    assert len(m.components) == 2 * (4 * 4 + 2)
    w = m.components[(1, "W_V", 3)].weights()[0]
    assert w.shape == (1, 64, 16)


def test_registry_slice_is_the_head(tl3_model):
    m = tl3_model
    toks = random_tokens(1, 10, 512)
    _, before, _ = m.capture(toks, ["blocks.0.attn.hook_v"])
    comp = m.components[(0, "W_V", 2)]
    saved = comp.weights()[0].clone()
    comp.weights()[0].zero_()
    _, after, _ = m.capture(toks, ["blocks.0.attn.hook_v"])
    comp.weights()[0].copy_(saved)
    changed = (after["blocks.0.attn.hook_v"] - before["blocks.0.attn.hook_v"]).abs().amax(dim=(0, 1, 3)) > 1e-6
    assert changed.tolist() == [False, False, True, False]


def test_scan_em_equals_greedy(tl3_model):
    m = tl3_model
    base = random_tokens(4, 40, 512, seed=3)
    gen = greedy_decode(m, base[:, :20], 20)
    tokens = torch.cat([base[:, :20], gen], 1)
    tokens[1, 27] = (gen[1, 7] + 1) % 512
    res = scan(m, ParagraphSet.from_tokens(tokens, prefix_len=20), progress=False)
    assert res.em.tolist() == [20, 7, 20, 20]


def test_patch_and_ablate_remove_hooks(tl3_model):
    m = tl3_model
    toks = random_tokens(1, 10, 512)
    clean = m(toks)
    with m.ablate("blocks.0.attn.hook_z", head=1):
        assert not torch.allclose(m(toks), clean)
    torch.testing.assert_close(m(toks), clean)


def test_forward_from_on_a_hooked_transformer(tl3_model):
    toks = random_tokens(2, 16, vocab_size=512)
    _, acts, _ = tl3_model.capture(toks, ["blocks.1.hook_resid_pre"])
    torch.testing.assert_close(tl3_model.forward_from(acts["blocks.1.hook_resid_pre"], 1), tl3_model(toks))
