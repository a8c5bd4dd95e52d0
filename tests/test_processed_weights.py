"""process_weights: TransformerLens's default processing (fold LN, center writing weights, fold value
biases) on a copy: the same function in the coordinates the paper's code differentiated."""

import pytest
import torch

from memlens import ModelLoadError
from memlens.analyses.gradients import GradientMap
from memlens.loading.processed import process_weights
from memlens.testing import random_model, random_tokens


@pytest.fixture(scope="module", params=["gpt_neo", "llama"])
def pair(request):
    model = random_model(request.param, seed=3)
    with torch.no_grad():  # norms with a non-trivial scale and shift, as after training
        g = torch.Generator().manual_seed(0)
        for name, p in model.plain_model().named_parameters():
            if "ln" in name or "norm" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model, process_weights(model)


def test_the_processed_model_computes_the_same_function(pair):
    raw, processed = pair
    tokens = random_tokens(3, 16, raw.vocab_size, seed=1)
    torch.testing.assert_close(processed(tokens), raw(tokens), rtol=1e-4, atol=1e-4)
    # the KV-cached decoding path (the plain HuggingFace twin, with the bias processing added) too
    from memlens import greedy_decode

    plain = processed.plain_model()(tokens).logits
    torch.testing.assert_close(plain, raw(tokens), rtol=1e-4, atol=1e-4)
    assert torch.equal(greedy_decode(processed, tokens[:, :8], 8), greedy_decode(raw, tokens[:, :8], 8))
    assert processed.name.endswith("+processed") and processed.ground_truth is raw.ground_truth


def test_weights_are_folded_and_centred_and_the_original_is_untouched(pair):
    raw, processed = pair
    hf, hf_raw = processed.plain_model(), raw.plain_model()
    if hf.config.model_type == "gpt_neo":
        block, raw_block = hf.transformer.h[0], hf_raw.transformer.h[0]
        assert torch.equal(block.ln_1.weight, torch.ones_like(block.ln_1.weight))
        assert torch.equal(block.ln_1.bias, torch.zeros_like(block.ln_1.bias))
        torch.testing.assert_close(block.attn.attention.q_proj.weight,
                                   raw_block.attn.attention.q_proj.weight * raw_block.ln_1.weight[None])
        assert block.attn.attention.out_proj.weight.mean(0).abs().max() < 1e-6  # centred over d_model
        assert torch.equal(block.attn.attention.v_proj.bias, torch.zeros_like(block.attn.attention.v_proj.bias))
        assert not torch.equal(raw_block.ln_1.weight, torch.ones_like(raw_block.ln_1.weight))
    else:
        layer, raw_layer = hf.model.layers[0], hf_raw.model.layers[0]
        assert torch.equal(layer.input_layernorm.weight, torch.ones_like(layer.input_layernorm.weight))
        torch.testing.assert_close(layer.mlp.up_proj.weight,
                                   raw_layer.mlp.up_proj.weight * raw_layer.post_attention_layernorm.weight[None])


def test_gradients_follow_the_reparametrisation(pair):
    """For a weight W that reads a norm with scale g: W_processed = W_raw * g, so where the norm has
    no shift (RMSNorm) dL/dW_processed = dL/dW_raw / g exactly; the maps therefore differ."""
    raw, processed = pair
    ps_tokens = random_tokens(2, 16, raw.vocab_size, seed=2)
    from memlens import ParagraphSet

    ps = ParagraphSet.from_tokens(ps_tokens, prefix_len=8)
    g_raw = GradientMap(raw, progress=False).compute(ps, keep_weight_grads=True).weight_grads
    g_pro = GradientMap(processed, progress=False).compute(ps, keep_weight_grads=True).weight_grads
    if raw.plain_model().config.model_type == "llama":
        name = "model.layers.0.mlp.up_proj.weight"
        scale = raw.plain_model().model.layers[0].post_attention_layernorm.weight.detach()
        torch.testing.assert_close(g_pro[name], g_raw[name] / scale[None].abs(), rtol=1e-3, atol=1e-6)
    assert any(not torch.allclose(g_pro[n], g_raw[n]) for n in g_raw)


def test_other_architectures_are_refused_clearly():
    with pytest.raises(ModelLoadError, match="supports gpt_neo, llama"):
        process_weights(random_model("gpt2"))
