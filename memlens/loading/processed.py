"""The weights the paper's code differentiated: TransformerLens ``HookedTransformer.from_pretrained``'s
default processing, applied to a copy of a HuggingFace model.

The paper's code loads GPT-Neo through ``HookedTransformer.from_pretrained`` (``fold_ln``,
``center_writing_weights``, ``fold_value_biases``), so its gradient maps, top-0.1% masks and Adam
steps live in those coordinates; memlens by default differentiates the raw HuggingFace weights.
:func:`process_weights` gives a second :class:`HookedModel` that computes the same function in the
processed coordinates:

- fold LN: each LayerNorm's scale multiplies the input columns of the matrices that read it
  (W_Q, W_K, W_V; W_in) and its shift becomes their bias; the LN keeps only its normalisation;
- center writing weights (LayerNorm models): W_O and W_out, and their biases, get mean 0 over
  d_model (every reader of the residual stream is a LayerNorm, which ignores the shift);
- fold value biases: b_V moves into b_O (attention weights sum to 1).

RMSNorm models (Llama, SmolLM2) get only the scale fold, as in TransformerLens. The final norm and
the (tied) unembedding are left as they are: they hold no trainable weight and do not change the
gradients of the trainable set.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from memlens.core.errors import ModelLoadError
from memlens.core.model import HookedModel

PROCESSABLE = ("gpt_neo", "llama")


@torch.no_grad()
def process_weights(model: HookedModel) -> HookedModel:
    """A new model with TransformerLens's default weight processing (see the module docstring),
    built on a copy of ``model``'s weights (``model`` is unchanged); its logits equal ``model``'s
    up to float rounding. GPT-Neo and Llama-like models (``PROCESSABLE``)."""
    from memlens.loading import from_hf

    if model.hf_model is None:
        raise ModelLoadError("process_weights needs a model with a HuggingFace twin (not a TransformerLens 3 model); "
                             "a HookedTransformer from TransformerLens 3 is processed at load already")
    model_type = model.hf_model.config.model_type
    if model_type not in PROCESSABLE:
        raise ModelLoadError(f"process_weights supports {', '.join(PROCESSABLE)} models, not {model_type!r}; "
                             "gradients on raw weights are memlens's default")
    hf = copy.deepcopy(model.plain_model())
    if model_type == "gpt_neo":
        _process_gpt_neo(hf)
    else:
        _process_llama(hf)
    return from_hf(hf, model.tokenizer, name=f"{model.name}+processed", prepend_bos=model.prepend_bos,
                   ground_truth=model.ground_truth)


def _fold_norm_into(norm: nn.Module, linears: list[nn.Linear], has_shift: bool) -> list[nn.Linear]:
    """Multiply each linear's input columns by the norm's scale, turn the norm's shift into a bias
    (adding one where the layer had none), and reset the norm's affine to the identity. Returns the
    linears (replacements where a bias was added)."""
    gamma = norm.weight.detach().clone()
    beta = norm.bias.detach().clone() if has_shift and getattr(norm, "bias", None) is not None else None
    out = []
    for lin in linears:
        w = lin.weight.detach().clone()
        new = lin
        if beta is not None and lin.bias is None:
            new = nn.Linear(lin.in_features, lin.out_features, bias=True, dtype=w.dtype, device=w.device)
            new.bias.zero_()
        new.weight.copy_(w * gamma[None, :])
        if beta is not None:
            new.bias.copy_((lin.bias.detach() if lin.bias is not None else 0.0) + w @ beta)
        out.append(new)
    norm.weight.fill_(1.0)
    if beta is not None:
        norm.bias.zero_()
    return out


def _center(lin: nn.Linear) -> None:
    """Mean 0 over the output (d_model) dimension of a layer that writes to the residual stream."""
    lin.weight.sub_(lin.weight.mean(dim=0, keepdim=True))
    if lin.bias is not None:
        lin.bias.sub_(lin.bias.mean())


def _process_gpt_neo(hf: nn.Module) -> None:
    for block in hf.transformer.h:
        attn = block.attn.attention
        attn.q_proj, attn.k_proj, attn.v_proj = _fold_norm_into(block.ln_1, [attn.q_proj, attn.k_proj, attn.v_proj],
                                                                has_shift=True)
        (block.mlp.c_fc,) = _fold_norm_into(block.ln_2, [block.mlp.c_fc], has_shift=True)
        # fold value biases: every head's b_V reaches the output as b_V W_O (attention sums to 1)
        attn.out_proj.bias.add_(attn.out_proj.weight @ attn.v_proj.bias)
        attn.v_proj.bias.zero_()
        _center(attn.out_proj)
        _center(block.mlp.c_proj)


def _process_llama(hf: nn.Module) -> None:
    for layer in hf.model.layers:
        a, m = layer.self_attn, layer.mlp
        a.q_proj, a.k_proj, a.v_proj = _fold_norm_into(layer.input_layernorm, [a.q_proj, a.k_proj, a.v_proj],
                                                       has_shift=False)
        m.gate_proj, m.up_proj = _fold_norm_into(layer.post_attention_layernorm, [m.gate_proj, m.up_proj],
                                                 has_shift=False)
