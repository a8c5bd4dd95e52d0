"""Resuming a forward pass at a block: the logits computed from the residual stream entering block
``L``, without computing blocks ``0..L-1``.

An intervention at layer ``L`` (zeroing one neuron, scaling an activation) leaves everything below
``L`` unchanged, so a method that runs many interventions on the same paragraphs (zero-out,
integrated gradients) needs the lower blocks once. HookedTransformer's ``start_at_layer`` skips
them; TransformerBridge's ``start_at_layer`` swaps the residual in at block ``L`` but still runs
blocks ``0..L-1`` on a discarded input (TransformerLens 4.3). :func:`forward_from` uses the
bridge's swap and, while it runs, replaces the lower blocks' HuggingFace modules by the identity
(returning what each module returns, a tensor or a tuple), so their cost is gone and the logits are
the same tensor the full forward pass gives (tested on every architecture memlens supports but
BLOOM, whose ALiBi residual the bridge's ``start_at_layer`` does not reproduce: off by 0.19 in the
logits in TransformerLens 4.3; :func:`can_forward_from` says so and callers run the full pass).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any, Iterator

import torch
from jaxtyping import Float
from torch import Tensor, nn

from memlens.core.errors import InputError


#: HuggingFace model types whose bridge ``start_at_layer`` does not reproduce the full forward pass.
UNSUPPORTED_MODEL_TYPES: frozenset[str] = frozenset({"bloom"})


def can_forward_from(model: Any) -> bool:
    """Whether :func:`forward_from` gives the full forward pass's logits on ``model``."""
    return model.model_type not in UNSUPPORTED_MODEL_TYPES


def block_output_arity(tl_model: nn.Module) -> list[int]:
    """For each bridge block, what its HuggingFace module returns: 0 for a bare tensor, ``n`` for
    an ``n``-tuple (hidden states first). Found once by a one-token forward pass, with the hook
    points' hooks set aside (a caller's hooks may be active and expect its own batch)."""
    arity: dict[int, int] = {}
    handles = []
    for i, block in enumerate(tl_model.blocks):
        def record(module: nn.Module, args: Any, out: Any, i: int = i) -> None:
            arity[i] = len(out) if isinstance(out, tuple) else 0
        handles.append(block.original_component.register_forward_hook(record))
    try:
        with torch.no_grad(), _hook_points_silenced(tl_model):
            tl_model(torch.zeros(1, 1, dtype=torch.long, device=next(tl_model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return [arity[i] for i in range(len(tl_model.blocks))]


@contextlib.contextmanager
def _hook_points_silenced(tl_model: nn.Module) -> Iterator[None]:
    """While the block runs, TransformerLens hook points run no hooks (they are put back after)."""
    from transformer_lens.hook_points import HookPoint

    points = [m for m in tl_model.modules() if isinstance(m, HookPoint)]
    saved = [(m._forward_hooks, m._forward_pre_hooks) for m in points]
    for m in points:
        m._forward_hooks, m._forward_pre_hooks = OrderedDict(), OrderedDict()
    try:
        yield
    finally:
        for m, (fwd, pre) in zip(points, saved):
            m._forward_hooks, m._forward_pre_hooks = fwd, pre


@contextlib.contextmanager
def lower_blocks_skipped(tl_model: nn.Module, layer: int, arity: list[int]) -> Iterator[None]:
    """While the block runs, bridge blocks ``0..layer-1`` pass their input through unchanged
    (in the output form their module has) instead of computing."""
    patched = []
    for block, n in zip(list(tl_model.blocks)[:layer], arity):
        module = block.original_component

        def identity(hidden_states: Tensor, *args: Any, n: int = n, **kwargs: Any) -> Any:
            return hidden_states if n == 0 else (hidden_states,) + (None,) * (n - 1)

        module.forward = identity
        patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


def forward_from(model: Any, residual: Float[Tensor, "batch pos d_model"], layer: int,
                 positions_from: int = 0) -> Float[Tensor, "batch pos_out vocab"]:
    """The logits from ``residual``, the residual stream entering block ``layer`` (the activation
    at ``blocks.{layer}.hook_resid_pre``), through blocks ``layer..n_layers-1``; active hooks on
    those blocks apply. Under ``bf16-mixed`` the blocks run under autocast and the logits of
    positions ``positions_from`` onwards are returned as float32, as :meth:`HookedModel.forward`."""
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < model.n_layers:
        raise InputError(f"layer must be a block index in [0, {model.n_layers}), got {layer!r}")
    if not isinstance(residual, Tensor) or residual.ndim != 3 or residual.shape[-1] != model.d_model:
        shape = tuple(residual.shape) if isinstance(residual, Tensor) else type(residual).__name__
        raise InputError(f"residual must be [batch, pos, d_model={model.d_model}], got {shape}")
    if not can_forward_from(model):
        raise InputError(f"forward_from is not exact on {model.model_type} models (the bridge's start_at_layer "
                         "does not reproduce their forward pass); run the full forward pass instead")
    tl = model.tl_model
    residual = residual.to(model.device)
    skip: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if model.is_bridge:
        if model._block_arity is None:
            model._block_arity = block_output_arity(tl)
        skip = lower_blocks_skipped(tl, layer, model._block_arity)
    with skip:
        return model._logits_of(lambda: tl(residual, start_at_layer=layer), positions_from)
