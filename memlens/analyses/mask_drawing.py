"""Drawing the mask of a sparse fine-tuning run: which trainable weights may change.

``topk`` (largest |gradient| of the objective), ``selective`` (that gradient relative to the retain
set's sensitivity), ``random`` (same size as top-k, or Bernoulli as the official code drew it),
``all``, a gradient map's top fraction or a user's boolean tensors (validated). Used by
:meth:`memlens.SparseFineTuner.make_mask`.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from memlens.analyses.gradients import GradientMapResult
from memlens.analyses.sparse_mask import SparseMask
from memlens.core.defaults import MASK_KINDS, RANDOM_MASK_DRAWS, SELECTIVITY_FLOOR, RandomMaskDraw, one_of
from memlens.core.errors import InputError
from memlens.core.results import check_same_model
from memlens.core.sparse import check_mask_model

Mask = dict[str, Tensor]
#: what a run may be given as its mask: a kind, a boolean tensor per parameter, a gradient map or a drawn mask
MaskSpec = str | Mask | GradientMapResult | SparseMask


def draw_mask(
    params: dict[str, nn.Parameter], model_name: str, kind: MaskSpec, fraction: float,
    objective_map: GradientMapResult | None, seed: int = 0, sensitivity: dict[str, Tensor] | None = None,
    selectivity_floor: float = SELECTIVITY_FLOOR, random_draw: RandomMaskDraw = "exact",
) -> tuple[Mask, str]:
    """The boolean masks over ``params`` (the trainable set of the model ``model_name``) that
    :meth:`SparseFineTuner.make_mask` describes, and the kind they resolved to (``topk``,
    ``selective``, ``random``, ``all`` or ``user``)."""
    if isinstance(kind, (GradientMapResult, SparseMask)):
        check_same_model(kind.provenance.model, model_name, f"the {type(kind).__name__} and the model tuned")
    if isinstance(kind, GradientMapResult):
        return kind.mask(fraction=fraction), "topk"
    if isinstance(kind, SparseMask):
        return validate_mask(params, kind.masks), kind.mask_kind
    if isinstance(kind, dict):
        check_mask_model(kind, model_name, "the mask and the model tuned")
        return validate_mask(params, kind), "user"
    if kind not in MASK_KINDS:
        raise InputError(f"unknown mask {kind!r}; use one of {MASK_KINDS}, a GradientMapResult or a dict of boolean tensors")
    if kind != "all" and (isinstance(fraction, bool) or not (isinstance(fraction, (int, float)) and 0 < fraction <= 1)):
        raise InputError(f"fraction must be in (0, 1], got {fraction!r}")
    if kind == "all":
        return {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}, "all"
    if kind in ("topk", "selective") and objective_map is None:
        raise InputError(f"a {kind} mask needs the objective's GradientMapResult")
    if kind == "topk":
        return objective_map.mask(fraction=fraction), "topk"
    if kind == "selective":
        if sensitivity is None:
            raise InputError("a selective mask needs the retain set's sensitivity (SparseFineTuner.retain_sensitivity)")
        return selective_mask(objective_map, sensitivity, fraction, selectivity_floor), "selective"
    g = torch.Generator().manual_seed(seed)
    if random_draw == "bernoulli":
        return {n: torch.rand(p.shape, generator=g) < fraction for n, p in params.items()}, "random"
    if random_draw != "exact":
        raise InputError(f"unknown random mask draw {random_draw!r}; use {one_of(RANDOM_MASK_DRAWS)}")
    total = sum(p.numel() for p in params.values())
    count = max(1, int(round(fraction * total)))
    chosen = torch.zeros(total, dtype=torch.bool)
    chosen[torch.randperm(total, generator=g)[:count]] = True
    out, offset = {}, 0
    for n, p in params.items():
        out[n] = chosen[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return out, "random"


def validate_mask(params: dict[str, nn.Parameter], mask: Mask) -> Mask:
    """``mask`` over every parameter of ``params`` (absent ones all False), refused in one line
    when it names other parameters, is not boolean, has another shape or selects nothing."""
    unknown = sorted(set(mask) - set(params))
    if unknown:
        raise InputError(f"mask names parameters the trainable set does not have: {unknown[:3]}; "
                         f"expected names like {sorted(params)[:2]}")
    out = {}
    for n, p in params.items():
        m = mask.get(n)
        if m is None:
            out[n] = torch.zeros_like(p, dtype=torch.bool)
            continue
        if not isinstance(m, Tensor) or m.dtype != torch.bool:
            raise InputError(f"mask for {n!r} must be a boolean tensor (True = may change), got "
                             f"{getattr(m, 'dtype', type(m).__name__)}")
        if m.shape != p.shape:
            raise InputError(f"mask for {n!r} has shape {tuple(m.shape)}, the parameter {tuple(p.shape)}")
        out[n] = m
    if sum(int(m.sum()) for m in out.values()) == 0:
        raise InputError("the mask selects no weight; nothing could change")
    return out


def selective_mask(
    objective_map: GradientMapResult, sensitivity: dict[str, Tensor], fraction: float, floor: float = SELECTIVITY_FLOOR
) -> Mask:
    """The top ``fraction`` of weights by |gradient of the objective| / sqrt(sensitivity + lambda):
    weights that move the target much and the retain set little (the ratio of forget to retain
    importance of Selective Synaptic Dampening, Foster et al. 2023). ``sensitivity`` comes from
    :meth:`SparseFineTuner.retain_sensitivity`; lambda is its ``floor`` quantile (at least its
    smallest positive value), so that weights the retain set never uses do not win by division
    by zero. A large floor tends to the plain top-k mask."""
    if objective_map.weight_grads is None:
        raise InputError("a selective mask needs per-weight gradients; compute the map with keep_weight_grads=True")
    if not 0 < floor <= 1:
        raise InputError(f"selectivity_floor is a quantile in (0, 1], got {floor}")
    if set(sensitivity) != set(objective_map.weight_grads):
        raise InputError("the retain sensitivity and the gradient map cover different parameters")
    flat = torch.cat([v.flatten() for v in sensitivity.values()])
    lam = flat.kthvalue(max(1, int(round(floor * flat.numel())))).values
    positive = flat[flat > 0]
    if positive.numel():
        lam = torch.maximum(lam, positive.min())
    else:
        lam = torch.ones(())
    scores = {n: g.abs() / (sensitivity[n] + lam).sqrt() for n, g in objective_map.weight_grads.items()}
    return replace(objective_map, weight_grads=scores, weight_grads_signed=False).mask(fraction=fraction)
