"""HookedModel.forward_from: the logits from the residual entering a block, the lower blocks skipped."""

import pytest
import torch

from memlens.core.errors import InputError
from memlens.core.partial_forward import can_forward_from
from memlens.testing import random_model, random_tokens


def _residual(model, toks, layer):
    _, acts, _ = model.capture(toks, [f"blocks.{layer}.hook_resid_pre"])
    return acts[f"blocks.{layer}.hook_resid_pre"]


def _zero_first_neuron(act, hook):
    act = act.clone()
    act[..., 0] = 0.0
    return act


@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed"])
def test_forward_from_gives_the_full_pass_logits_with_hooks_above(any_model, precision):
    if not can_forward_from(any_model):
        with pytest.raises(InputError, match="not exact"):
            any_model.forward_from(torch.zeros(1, 3, any_model.d_model), 1)
        return
    toks = random_tokens(3, 20, vocab_size=any_model.vocab_size)
    with any_model.using_precision(precision):
        last = any_model.n_layers - 1
        resid = _residual(any_model, toks, last)
        torch.testing.assert_close(any_model.forward_from(resid, last), any_model(toks), atol=0, rtol=0)
        hook = [(f"blocks.{last}.mlp.hook_post", _zero_first_neuron)]
        with any_model.hooks(fwd_hooks=hook):
            full, part = any_model(toks), any_model.forward_from(resid, last, positions_from=5)
        assert (full - any_model(toks)).abs().max() > 1e-3  # the hook changes the logits
        torch.testing.assert_close(part, full[:, 5:], atol=0, rtol=0)


def test_the_lower_blocks_do_not_run_and_come_back_after():
    model = random_model("llama", n_layers=4)
    toks = random_tokens(2, 12, vocab_size=model.vocab_size)
    resid = _residual(model, toks, 3)
    model.forward_from(resid, 3)  # the first call learns each block's output form
    ran: list[int] = []
    handles = [b.original_component.mlp.register_forward_pre_hook(lambda m, a, i=i: ran.append(i))
               for i, b in enumerate(model.tl_model.blocks)]
    try:
        with torch.no_grad():
            model.forward_from(resid, 3)
            assert ran == [3]
            ran.clear()
            model(toks)
            assert ran == [0, 1, 2, 3]
    finally:
        for h in handles:
            h.remove()


def test_bad_layer_or_residual_is_refused(neo):
    with pytest.raises(InputError, match="layer must be a block index"):
        neo.forward_from(torch.zeros(1, 3, neo.d_model), neo.n_layers)
    with pytest.raises(InputError, match="residual must be"):
        neo.forward_from(torch.zeros(1, 3, neo.d_model + 1), 0)


def test_bloom_is_refused_rather_than_wrong():
    model = random_model("bloom", n_layers=2)
    assert not can_forward_from(model)
    with pytest.raises(InputError, match="run the full forward pass"):
        model.forward_from(torch.zeros(1, 3, model.d_model), 1)


def test_the_first_call_may_come_with_hooks_that_expect_their_own_batch():
    model = random_model("gpt_neo", n_layers=2)
    toks = random_tokens(3, 12, vocab_size=model.vocab_size)
    resid = _residual(model, toks, 1)
    seen: list[int] = []

    def needs_three_rows(act, hook):
        seen.append(act.shape[0])
        assert act.shape[0] == 3
        return act

    with torch.no_grad(), model.hooks(fwd_hooks=[("blocks.1.mlp.hook_post", needs_three_rows)]):
        torch.testing.assert_close(model.forward_from(resid, 1), model(toks))
    assert seen == [3, 3]
