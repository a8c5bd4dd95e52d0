import pytest
import torch

from memlens import InputError
from memlens.core.components import HEAD_KINDS, ComponentKey


def test_registry_shape(any_model):
    reg = any_model.components
    assert len(reg) == any_model.n_layers * (4 * any_model.n_heads + 2)
    assert reg.keys[0] == ComponentKey(0, "W_Q", 0) and reg.keys[-1] == ComponentKey(any_model.n_layers - 1, "W_out", -1)
    for c in reg:
        expected = any_model.d_model * any_model.d_head if c.key.kind in HEAD_KINDS else None
        if expected is not None:
            assert c.numel == expected


def _single_head_effect(model, kind):
    """Zero the weights of one registry component and return which heads' hook outputs change."""
    toks = torch.randint(1, model.vocab_size, (1, 10))
    hook = {"W_Q": "blocks.0.attn.hook_q", "W_K": "blocks.0.attn.hook_k", "W_V": "blocks.0.attn.hook_v"}[kind]
    _, before, _ = model.capture(toks, [hook])
    comp = model.components[(0, kind, 1)]
    saved = [w.clone() for w in comp.weights()]
    try:
        for w in comp.weights():
            w.zero_()
        _, after, _ = model.capture(toks, [hook])
    finally:
        for w, s in zip(comp.weights(), saved):
            w.copy_(s)
    diff = (after[hook] - before[hook]).abs().amax(dim=(0, 1, 3))
    return diff > 1e-6


@pytest.mark.parametrize("kind", ["W_Q", "W_K", "W_V"])
def test_component_slice_is_that_heads_weights(any_model, kind):
    """Zeroing the registry's slice for head 1 changes head 1's q/k/v activation (or its key/value
    group for grouped-query models) and no other head's."""
    changed = _single_head_effect(any_model, kind)
    if any_model.model_type == "llama" and kind in ("W_K", "W_V"):
        assert changed.tolist() == [True, False]  # 2 key/value heads; head 1 uses group 0
    else:
        assert changed.tolist() == [h == 1 for h in range(any_model.n_heads)]


def test_w_o_slice_feeds_from_its_head(any_model):
    """The W_O slice of head h is exactly what head h's z multiplies: zeroing it equals zeroing z_h."""
    toks = torch.randint(1, any_model.vocab_size, (1, 10))
    comp = any_model.components[(0, "W_O", 2)]
    saved = [w.clone() for w in comp.weights()]
    for w in comp.weights():
        w.zero_()
    a = any_model(toks)
    for w, s in zip(comp.weights(), saved):
        w.copy_(s)
    with any_model.patch("blocks.0.attn.hook_z", torch.zeros(()), head=2):
        b = any_model(toks)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bad_keys(neo):
    with pytest.raises(InputError, match="unknown component kind"):
        neo.components[(0, "W_X", 0)]
    with pytest.raises(InputError, match="layer 5 out of range"):
        neo.components[(5, "W_Q", 0)]
    with pytest.raises(InputError, match="head 9 out of range"):
        neo.components[(0, "W_Q", 9)]
    assert neo.components[(1, "W_in")].key == ComponentKey(1, "W_in", -1)


def test_gated_mlp_w_in_owns_gate_and_up_projection(any_model):
    """Llama-family MLPs have two input matrices (gate, up): W_in owns both, so gradient maps,
    masks and unlearning reach every MLP weight."""
    comp = any_model.components[(0, "W_in")]
    names = [s.param_name for s in comp.slices]
    if any_model.model_type == "llama":
        assert len(names) == 2 and names[0].endswith("gate_proj.weight") and names[1].endswith("up_proj.weight")
        assert comp.numel == 2 * any_model.d_model * any_model.d_mlp
    else:
        assert len(names) == 1 and comp.numel == any_model.d_model * any_model.d_mlp
    owned = {id(p) for p in any_model.components.parameters}
    mlp_weights = [p for n, p in any_model.named_parameters().items() if ".mlp." in n and n.endswith("weight")]
    assert mlp_weights and all(id(p) in owned for p in mlp_weights)


def test_shared_key_value_weights_count_once(any_model):
    reg = any_model.components
    total = sum(p.numel() for p in reg.parameters)
    assert reg.numel == total  # every owned weight once: no grouped-query slice counted per query head
    shared = reg.shared_with((0, "W_K", 0))
    if any_model.model_type == "llama":
        assert shared == [ComponentKey(0, "W_K", 1)]  # 4 query heads, 2 key/value heads
    else:
        assert shared == []
