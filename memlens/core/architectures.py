"""What memlens knows of each model architecture, in one table: one :class:`Architecture` per
HuggingFace ``model_type``.

Parameter names are those of the booted model with TransformerBridge prefixes removed
(``memlens.core.compat.strip_bridge_name``), with ``{layer}`` to fill in. Weights are ``nn.Linear``
``[out, in]`` unless ``out_proj_dim``/``conv1d`` say otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from memlens.core.errors import ModelLoadError


@dataclass(frozen=True, kw_only=True)
class Architecture:
    """One model type's layout.

    Attributes:
        model_type: the HuggingFace ``config.model_type``.
        q, k, v, o: per-layer names of the attention projection weights (q/k/v heads along
            dim 0; ``o`` heads along ``o_head_dim``).
        mlp_in: the MLP input weights (gated MLPs: gate and up projection; both belong to W_in).
        mlp_out: the MLP output weight.
        o_head_dim: the dimension of ``o`` that runs over heads x d_head.
        fused_qkv: the HF model stores q/k/v fused and the bridge splits them into the ``q``/``k``/
            ``v`` names above (the plain twin needs them copied back, see ``compat.sync_fused_qkv``).
        fused_layout: how the fused weight interleaves them: ``concat`` (GPT-2 Conv1D ``[in, 3d]``),
            ``per_head`` (NeoX, BLOOM ``[heads * 3 * d_head, in]``) or ``rows`` (Phi-3 ``[q; k; v]``
            rows of an ``nn.Linear``, key/value rows fewer under grouped-query attention).
        fused_mlp: the HF model stores gate and up projection fused (Phi-3 ``gate_up_proj``) and the
            bridge splits them into the ``mlp_in`` names (the plain twin needs them copied back).
        bridge_renames: ``(booted, huggingface)`` substrings the bridge renames in parameter names.
        grouped_query: key/value heads may be fewer than query heads (``num_key_value_heads``).
        pattern_edits: whether patching ``hook_pattern`` changes the output under the bridge.
    """

    model_type: str
    q: str
    k: str
    v: str
    o: str
    mlp_in: tuple[str, ...]
    mlp_out: str
    o_head_dim: int = 1
    fused_qkv: bool = False
    fused_layout: str = ""
    bridge_renames: tuple[tuple[str, str], ...] = ()
    grouped_query: bool = False
    pattern_edits: bool = True
    fused_mlp: bool = False


def _llama_like(model_type: str) -> Architecture:
    a, m = "model.layers.{layer}.self_attn", "model.layers.{layer}.mlp"
    return Architecture(model_type=model_type, q=f"{a}.q_proj.weight", k=f"{a}.k_proj.weight", v=f"{a}.v_proj.weight",
                        o=f"{a}.o_proj.weight", mlp_in=(f"{m}.gate_proj.weight", f"{m}.up_proj.weight"),
                        mlp_out=f"{m}.down_proj.weight", grouped_query=True)


def _plain(model_type: str, attn: str, q: str, k: str, v: str, o: str, mlp_in: str, mlp_out: str,
           grouped_query: bool = False) -> Architecture:
    """An architecture with separate q/k/v/o projections and one MLP input matrix."""
    return Architecture(model_type=model_type, q=f"{attn}.{q}.weight", k=f"{attn}.{k}.weight", v=f"{attn}.{v}.weight",
                        o=f"{attn}.{o}.weight", mlp_in=(f"{mlp_in}.weight",), mlp_out=f"{mlp_out}.weight",
                        grouped_query=grouped_query)


_NEO_ATTN, _NEO_MLP = "transformer.h.{layer}.attn.attention", "transformer.h.{layer}.mlp"
_GPT2_ATTN, _GPT2_MLP = "transformer.h.{layer}.attn", "transformer.h.{layer}.mlp"
_NEOX_ATTN, _NEOX_MLP = "gpt_neox.layers.{layer}.attention", "gpt_neox.layers.{layer}.mlp"

ARCHITECTURES: dict[str, Architecture] = {
    "gpt_neo": Architecture(
        model_type="gpt_neo", q=f"{_NEO_ATTN}.q_proj.weight", k=f"{_NEO_ATTN}.k_proj.weight",
        v=f"{_NEO_ATTN}.v_proj.weight", o=f"{_NEO_ATTN}.out_proj.weight", mlp_in=(f"{_NEO_MLP}.c_fc.weight",),
        mlp_out=f"{_NEO_MLP}.c_proj.weight", pattern_edits=False),
    "gpt2": Architecture(
        model_type="gpt2", q=f"{_GPT2_ATTN}.q.weight", k=f"{_GPT2_ATTN}.k.weight", v=f"{_GPT2_ATTN}.v.weight",
        o=f"{_GPT2_ATTN}.o.weight", o_head_dim=0, mlp_in=(f"{_GPT2_MLP}.c_fc.weight",),
        mlp_out=f"{_GPT2_MLP}.c_proj.weight", fused_qkv=True, fused_layout="concat",
        bridge_renames=((".attn.qkv.", ".attn.c_attn."), (".attn.o.", ".attn.c_proj."))),
    "gpt_neox": Architecture(
        model_type="gpt_neox", q=f"{_NEOX_ATTN}.q.weight", k=f"{_NEOX_ATTN}.k.weight", v=f"{_NEOX_ATTN}.v.weight",
        o=f"{_NEOX_ATTN}.o.weight", mlp_in=(f"{_NEOX_MLP}.dense_h_to_4h.weight",),
        mlp_out=f"{_NEOX_MLP}.dense_4h_to_h.weight", fused_qkv=True, fused_layout="per_head",
        bridge_renames=((".attention.qkv.", ".attention.query_key_value."), (".attention.o.", ".attention.dense."))),
    **{t: _llama_like(t) for t in ("llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2", "gemma", "gemma2",
                                   "stablelm")},
    "opt": _plain("opt", "model.decoder.layers.{layer}.self_attn", "q_proj", "k_proj", "v_proj", "out_proj",
                  "model.decoder.layers.{layer}.fc1", "model.decoder.layers.{layer}.fc2"),
    "phi": _plain("phi", "model.layers.{layer}.self_attn", "q_proj", "k_proj", "v_proj", "dense",
                  "model.layers.{layer}.mlp.fc1", "model.layers.{layer}.mlp.fc2", grouped_query=True),
    "bloom": Architecture(
        model_type="bloom", q="transformer.h.{layer}.self_attention.q.weight",
        k="transformer.h.{layer}.self_attention.k.weight", v="transformer.h.{layer}.self_attention.v.weight",
        o="transformer.h.{layer}.self_attention.o.weight", mlp_in=("transformer.h.{layer}.mlp.dense_h_to_4h.weight",),
        mlp_out="transformer.h.{layer}.mlp.dense_4h_to_h.weight", fused_qkv=True, fused_layout="per_head",
        bridge_renames=((".self_attention.qkv.", ".self_attention.query_key_value."),
                        (".self_attention.o.", ".self_attention.dense."))),
    "phi3": Architecture(
        model_type="phi3", q="model.layers.{layer}.self_attn.q.weight", k="model.layers.{layer}.self_attn.k.weight",
        v="model.layers.{layer}.self_attn.v.weight", o="model.layers.{layer}.self_attn.o.weight",
        mlp_in=("model.layers.{layer}.mlp.gate.weight", "model.layers.{layer}.mlp.in.weight"),
        mlp_out="model.layers.{layer}.mlp.down_proj.weight", fused_qkv=True, fused_layout="rows", fused_mlp=True,
        grouped_query=True,
        bridge_renames=((".self_attn.qkv.", ".self_attn.qkv_proj."), (".self_attn.o.", ".self_attn.o_proj."))),
    "gptj": _plain("gptj", "transformer.h.{layer}.attn", "q_proj", "k_proj", "v_proj", "out_proj",
                   "transformer.h.{layer}.mlp.fc_in", "transformer.h.{layer}.mlp.fc_out"),
}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(ARCHITECTURES)


def architecture(model_type: str) -> Architecture:
    """The :class:`Architecture` of a HuggingFace model type, or a :class:`ModelLoadError` listing
    the supported ones."""
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise ModelLoadError(f"model type {model_type!r} has no component registry (the weights of each head and "
                             "MLP that gradient maps, masks, unlearning and editing need); memlens has one for "
                             f"{', '.join(SUPPORTED_MODEL_TYPES)}. Scans, prefix perturbation, activation patching "
                             "and attention views work on any model the TransformerBridge boots") from None


def all_bridge_renames() -> tuple[tuple[str, str], ...]:
    """Every architecture's bridge renames (they do not overlap)."""
    return tuple(r for a in ARCHITECTURES.values() for r in a.bridge_renames)
