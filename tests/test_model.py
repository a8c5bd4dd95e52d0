import pytest
import torch

from memlens import HookError, InputError


def test_public_surface(neo):
    assert neo.n_layers == 2 and neo.n_heads == 4 and neo.d_head == 16
    assert neo.hf_model is not None and neo.tl_model is not None and neo.tokenizer is not None
    toks = neo.to_tokens("def foo(x):\n    return x")
    assert toks.dtype == torch.long and toks.shape[0] == 1
    assert toks[0, 0] != neo.tokenizer.bos_token_id  # no BOS by default, as in the paper
    assert neo.to_tokens("a b", prepend_bos=True)[0, 0] == neo.tokenizer.bos_token_id
    assert neo.to_string(toks[0]) == "def foo(x):\n    return x"
    logits = neo(toks)
    assert logits.shape == (1, toks.shape[1], neo.vocab_size)


def test_bridge_matches_plain_huggingface(any_model):
    toks = torch.randint(1, any_model.vocab_size, (2, 24))
    with torch.no_grad():
        plain = any_model.plain_model()(toks).logits
    torch.testing.assert_close(any_model(toks), plain, atol=1e-4, rtol=1e-4)


def test_bad_tokens_are_refused(neo):
    with pytest.raises(InputError, match="outside the vocabulary"):
        neo(torch.tensor([[1, 2, 99999]]))
    with pytest.raises(InputError, match="LongTensor"):
        neo(torch.rand(1, 3))
    with pytest.raises(InputError, match="exceed the model's context"):
        neo(torch.ones(1, neo.n_ctx + 1, dtype=torch.long))


def test_unknown_hook_name_suggests(neo):
    with pytest.raises(HookError, match=r"no hook point 'blocks.0.attn.hook_zz'.*hook_z"):
        with neo.patch("blocks.0.attn.hook_zz", torch.zeros(1)):
            pass


def test_hooks_are_removed_even_on_error(neo):
    toks = torch.randint(1, 500, (1, 10))
    clean = neo(toks)
    with pytest.raises(RuntimeError):
        with neo.ablate("blocks.0.hook_resid_pre"):
            assert not torch.allclose(neo(toks), clean)
            raise RuntimeError("boom")
    torch.testing.assert_close(neo(toks), clean)


def test_patch_head_changes_only_that_head(neo):
    toks = torch.randint(1, 500, (2, 12))
    _, acts, _ = neo.capture(toks, ["blocks.1.attn.hook_z"])
    z = acts["blocks.1.attn.hook_z"]
    seen = {}
    with neo.patch("blocks.1.attn.hook_z", torch.zeros(()), head=2, positions=[3, 4]):
        _, acts2, _ = neo.capture(toks, ["blocks.1.attn.hook_z"])
        seen["out"] = neo(toks)
    z2 = acts2["blocks.1.attn.hook_z"]
    assert torch.all(z2[:, [3, 4], 2] == 0)
    mask = torch.ones_like(z, dtype=torch.bool)
    mask[:, [3, 4], 2] = False
    torch.testing.assert_close(z2[mask], z[mask])
    # the patched head output changes the logits from position 3 on, never before
    clean = neo(toks)
    torch.testing.assert_close(seen["out"][:, :3], clean[:, :3])
    assert not torch.allclose(seen["out"][:, 3:], clean[:, 3:])


def test_capture_gradients_match_autograd(neo):
    toks = torch.randint(1, 500, (2, 10))

    def loss_fn(logits):
        return logits[:, -1].logsumexp(-1).sum()

    loss, acts, grads = neo.capture(toks, lambda n: n == "blocks.1.hook_resid_pre", loss_fn=loss_fn)
    assert set(acts) == {"blocks.1.hook_resid_pre"} and set(grads) == {"blocks.1.hook_resid_pre"}
    # independent check: perturb the activation along its gradient; first-order change matches
    g = grads["blocks.1.hook_resid_pre"]
    eps = 1e-3
    with neo.patch("blocks.1.hook_resid_pre", lambda a, hook: a + eps * g):
        with torch.no_grad():
            bumped = loss_fn(neo(toks))
    assert abs((bumped - loss).item() - eps * (g * g).sum().item()) < 0.05 * eps * (g * g).sum().item()
    assert all(p.grad is None for p in neo.tl_model.parameters())


def test_run_with_cache_only_keeps_what_is_asked(neo):
    toks = torch.randint(1, 500, (1, 8))
    _, cache = neo.run_with_cache(toks, lambda n: n.endswith("hook_pattern"))
    assert sorted(cache.keys()) == ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]


def test_ablate_mean_and_modes(neo):
    with pytest.raises(InputError, match="unknown ablation mode"):
        with neo.ablate("blocks.0.attn.hook_z", mode="resample"):
            pass


def test_dtype_and_device(tmp_path):
    """A model cast to bfloat16 still scans; the stage's greedy check compares teacher-forced EM
    with real greedy decoding (exact at float32); a device that is not there is a clear error."""
    from memlens import InputError, ParagraphSet, greedy_decode, scan
    from memlens.run.stages.scan import greedy_check
    from memlens.testing import random_model, random_tokens

    model = random_model("gpt_neo", seed=9)
    base = random_tokens(6, 16, model.vocab_size, seed=2)
    paras = ParagraphSet.from_tokens(torch.cat([base, greedy_decode(model, base, 16)], 1), prefix_len=16)
    full = greedy_check(model, scan(model, paras, progress=False))
    assert full == {"n": 6, "agree": 6, "max_abs_diff": 0, "dtype": "float32", "precision": "fp32"}
    model.to(dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    low = greedy_check(model, scan(model, paras, progress=False))
    assert low["dtype"] == "bfloat16" and 0 <= low["agree"] <= 6
    with pytest.raises(InputError, match="unknown dtype"):
        model.to(dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="not available"):
            model.to(device="cuda")


def test_patch_and_ablate_check_the_head(neo):
    toks = torch.randint(1, neo.vocab_size, (1, 8))
    for bad in (-1, neo.n_heads):
        with pytest.raises(InputError, match="out of range"):
            with neo.ablate("blocks.0.attn.hook_z", head=bad):
                neo(toks)
    with pytest.raises(InputError, match="no head axis"):
        with neo.patch("blocks.0.hook_resid_pre", torch.zeros(()), head=0):
            neo(toks)
