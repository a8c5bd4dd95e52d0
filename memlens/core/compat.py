"""Every work-around for a version of TransformerLens, transformers or Python, in one place.

Each shim says what it works around and when it can go. The tests that pin the behaviour are
named with it; when a shim's removal condition holds, delete it and its callers use the plain
library call.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
import functools
import inspect
import sys
from typing import Any, Iterator

import torch
from torch import nn

from memlens.core.errors import ModelLoadError

# --- Python ----------------------------------------------------------------------------------
# tomllib is in the standard library from Python 3.11. Remove when requires-python >= 3.11.
if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    try:
        import tomli as tomllib
    except ImportError as e:  # noqa: F841
        tomllib = None  # type: ignore[assignment]


# --- transformers ----------------------------------------------------------------------------
# transformers 5.24 renamed the forward's KV-cache argument of GPT-2, NeoX and Llama from
# ``past_key_values`` to ``cache`` (GPT-Neo kept the old name). Remove when the minimum
# transformers uses one name for every supported architecture (tests/test_metrics.py checks
# cached decoding against recompute for each).

# transformers' GGUF loader draws its own tqdm bar ("Converting and de-quantizing GGUF
# tensors..."), which its progress-bar switch (disable_progress_bar) does not reach, so
# `--quiet` printed a bar. Remove when transformers' GGUF conversion uses its logging tqdm
# (tests/test_loading.py::test_gguf_smollm2 checks that a quiet load prints nothing).

@contextlib.contextmanager
def quiet_gguf_conversion(quiet: bool = True) -> Iterator[None]:
    """Inside the block, transformers' GGUF conversion shows no progress bar (when ``quiet``)."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # pragma: no cover
        yield
        return
    original = gguf_utils.tqdm
    if quiet:
        gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def cache_keyword(hf_model: nn.Module) -> str:
    """The forward argument that takes a KV cache: ``cache`` or ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(hf_model.forward).parameters else "past_key_values"


def returned_cache(output: object) -> object:
    """The KV cache a HuggingFace forward returned, under either name."""
    return getattr(output, "past_key_values", None) or getattr(output, "cache", None)


# --- TransformerLens 4.3 bridge --------------------------------------------------------------
# Booting a TransformerBridge wraps HF modules (parameter names gain ``._original_component``)
# and, for GPT-2 and NeoX, renames the fused attention modules (architectures.py lists the
# renames). Remove strip_bridge_name/hf_parameter_name when the bridge keeps HF names.

def strip_bridge_name(name: str) -> str:
    """A booted model's parameter name without the bridge's ``._original_component`` parts."""
    return name.replace("._original_component", "")


def hf_parameter_name(booted_name: str) -> str:
    """The HuggingFace name of a parameter of a booted model."""
    from memlens.core.architectures import all_bridge_renames

    name = strip_bridge_name(booted_name)
    for new, old in all_bridge_renames():
        name = name.replace(new, old)
    return name


def hook_aliases(bridge: nn.Module) -> set[str]:
    """The HookedTransformer-era hook names (``blocks.0.attn.hook_z``, ...) a TL 4 bridge accepts.
    Remove when TransformerLens lists aliases in ``hook_dict`` itself."""
    from transformer_lens.model_bridge.bridge_core import build_alias_to_canonical_map

    return set(build_alias_to_canonical_map(bridge.hook_dict))


# KV-cached generation through the TL 4.3 bridge is silently wrong for GPT-2 and Llama with
# transformers >= 5.14 (the bridge reads ``past_key_values``, transformers passes ``cache``):
# memlens decodes in a never-booted twin that shares the weights. Remove plain_twin and
# sync_fused_qkv when the bridge's cached greedy decoding equals full recompute for every
# supported architecture (tests/test_metrics.py::test_cached_decoding_matches_recompute).

def plain_twin(hf_model: nn.Module) -> nn.Module:
    """A never-booted copy of a (booted) HuggingFace model that shares its parameters and buffers.

    Built on the meta device, so it costs no weight memory. For fused-QKV architectures call
    :func:`sync_fused_qkv` before using it.
    """
    cfg = copy.deepcopy(hf_model.config)
    params = {hf_parameter_name(n): p for n, p in hf_model.named_parameters(remove_duplicate=False)}
    buffers = {hf_parameter_name(n): b for n, b in hf_model.named_buffers(remove_duplicate=False)}
    with quiet_transformers(), torch.device("meta"):
        twin = type(hf_model)(cfg)
    for name, _ in list(twin.named_parameters(remove_duplicate=False)):
        if name not in params:
            raise ModelLoadError(f"cannot build a plain twin: parameter {name!r} not found in the booted model")
        _set(twin, name, params[name], is_param=True)
    twin_names = {n for n, _ in twin.named_parameters(remove_duplicate=False)}
    for name, param in params.items():  # a bias added to a bias-free linear (memlens.loading.processed)
        owner, _, leaf = name.rpartition(".")
        if name not in twin_names and leaf == "bias":
            try:
                module = twin.get_submodule(owner)
            except AttributeError:  # a bridge-only name
                continue
            if isinstance(module, nn.Linear) and module.bias is None:
                module.bias = param
    for name, buf in list(twin.named_buffers(remove_duplicate=False)):
        if name in buffers:
            _set(twin, name, buffers[name], is_param=False)
        elif buf.is_meta:
            raise ModelLoadError(f"cannot build a plain twin: buffer {name!r} not found in the booted model")
    return twin.eval()


@torch.no_grad()
def sync_fused_qkv(hf_model: nn.Module, n_heads: int) -> None:
    """Copy the bridge's split q/k/v weights (what its forward uses and what training changes)
    into the fused QKV weight that the plain twin uses (GPT-2 ``c_attn``, NeoX
    ``query_key_value``); a no-op for architectures without fused QKV."""
    from memlens.core.architectures import ARCHITECTURES

    arch = ARCHITECTURES.get(hf_model.config.model_type)
    if arch is None or not arch.fused_qkv:  # an unlisted type is not trained by memlens (no registry)
        return
    params = {strip_bridge_name(n): p for n, p in hf_model.named_parameters()}
    for name, fused in params.items():
        for kind in ("weight", "bias"):
            if name.endswith(f".mlp.gate_up_proj.{kind}") and arch.fused_mlp:  # [gate; up] rows
                base = name[: -len(f"gate_up_proj.{kind}")]
                _copy_rows(fused, [params[f"{base}{x}.{kind}"] for x in ("gate", "in")])
            if not name.endswith(f".qkv.{kind}"):
                continue
            base = name[: -len(f"qkv.{kind}")]
            split = [params[f"{base}{x}.{kind}"] for x in "qkv"]
            d = split[0].shape[0]
            if arch.fused_layout == "concat":
                for i, s in enumerate(split):
                    fused.narrow(-1, i * d, d).copy_(s.T if kind == "weight" else s)
            elif arch.fused_layout == "rows":
                _copy_rows(fused, split)
            else:
                view = fused.view(n_heads, 3, d // n_heads, *fused.shape[1:])
                for i, s in enumerate(split):
                    view[:, i].copy_(s.view(n_heads, d // n_heads, *s.shape[1:]))


def _copy_rows(fused: torch.Tensor, parts: list[torch.Tensor]) -> None:
    """Copy ``parts`` one after another into the rows (dim 0) of ``fused``."""
    offset = 0
    for part in parts:
        fused.narrow(0, offset, part.shape[0]).copy_(part)
        offset += part.shape[0]


def _set(root: nn.Module, dotted: str, value: Any, is_param: bool) -> None:
    *path, leaf = dotted.split(".")
    mod = root
    for part in path:
        mod = getattr(mod, part)
    if is_param:
        mod._parameters[leaf] = value
    else:
        mod._buffers[leaf] = value


class quiet_transformers:
    """Silence transformers' and TransformerLens' chatter while loading (warnings still in logs)."""

    def __enter__(self) -> None:
        self._warn = warnings.catch_warnings()
        self._warn.__enter__()
        warnings.simplefilter("ignore")
        self._levels = {}
        for n in ("transformers", "root", "transformer_lens"):
            lg = logging.getLogger(n if n != "root" else None)
            self._levels[n] = lg.level
            lg.setLevel(logging.ERROR)
        try:
            from transformers.utils import logging as hf_logging

            self._hf = hf_logging.get_verbosity()
            self._bars = hf_logging.is_progress_bar_enabled()
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
        except ImportError:  # pragma: no cover
            self._hf = None

    def __exit__(self, *exc: Any) -> None:
        for n, lvl in self._levels.items():
            logging.getLogger(n if n != "root" else None).setLevel(lvl)
        if self._hf is not None:
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity(self._hf)
            if self._bars:
                hf_logging.enable_progress_bar()
        self._warn.__exit__(*exc)


def keep_fp32_attention(hf_model: nn.Module) -> None:
    """Under autocast, compute GPT-Neo's attention (scores, softmax, weighted sum) in float32, as its
    HuggingFace code means to ("Keep the attention weights computation in fp32": it upcasts query and
    key, which autocast would cast back to bfloat16 for the matmul). GPT-Neo does not scale its
    attention scores by 1/sqrt(d_head), so bfloat16 scores (spacing 0.5 at 100) flip attention and,
    through it, greedy tokens. Outside autocast nothing changes (the original method is called).
    Applied in place to every GPT-Neo self-attention module of ``hf_model``; idempotent."""
    for module in hf_model.modules():
        if type(module).__name__ != "GPTNeoSelfAttention" or getattr(module, "_memlens_fp32_attn", False):
            continue
        original = module._attn

        def _attn(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any = None,
                  _original: Any = original) -> Any:
            device = query.device.type
            if not torch.is_autocast_enabled(device):
                return _original(query, key, value, attention_mask)
            with torch.autocast(device, enabled=False):
                out, weights = _original(query.float(), key.float(), value.float(), attention_mask)
            return out.to(value.dtype), weights

        module._attn = _attn
        module._memlens_fp32_attn = True
