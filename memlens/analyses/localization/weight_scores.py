"""What a per-weight gradient score measures: the row and column scales that decide it, and scores
with them divided out (issue #41, "why the top-k gradient does not find planted single weights").

For a weight matrix ``W`` read as ``x @ W`` (TransformerLens's layout: the input on axis -2, the
output on axis -1, any head axis in front), the gradient of a loss summed over tokens ``t`` is
``g[i, j] = sum_t x_t[i] * delta_t[j]``: the input activation of row ``i`` times the error signal
of column ``j``. When a few tokens or a few large activations dominate, ``|g|`` is close to an
outer product of a row scale and a column scale, and its top-k picks the rows and columns with the
largest activations and error signals, whichever single weights were planted there.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from memlens.core.errors import InputError

_EPS = 1e-30


def _matrix_view(g: Tensor) -> Tensor:
    """``g`` as ``[batch, d_in, d_out]`` (leading axes flattened); a 1-D tensor is refused."""
    if g.dim() < 2:
        raise InputError(f"a gradient of shape {tuple(g.shape)}: a per-weight score needs a matrix "
                         "(input axis -2, output axis -1)")
    return g.reshape(-1, g.shape[-2], g.shape[-1])


def rank_one_scale(grad: Float[Tensor, "*head d_in d_out"]) -> Float[Tensor, "*head d_in d_out"]:
    """The outer-product part of ``|grad|``: ``row[i] * col[j] / mean``, where ``row`` is the mean
    ``|grad|`` of each input row, ``col`` that of each output column and ``mean`` that of the whole
    matrix (per leading head index). Exact when ``|grad|`` is itself an outer product."""
    a = _matrix_view(grad.abs().float())
    row = a.mean(-1, keepdim=True)
    col = a.mean(-2, keepdim=True)
    mean = a.mean((-2, -1), keepdim=True).clamp_min(_EPS)
    return (row * col / mean).reshape(grad.shape)


def scale_normalized(grad: Float[Tensor, "*head d_in d_out"]) -> Float[Tensor, "*head d_in d_out"]:
    """``|grad|`` divided by its :func:`rank_one_scale`: how large a weight's gradient is for its
    row and column (1 everywhere for an exact outer product). A memlens variant, not the paper's."""
    return grad.abs().float() / rank_one_scale(grad).clamp_min(_EPS)


def row_column_r2(grad: Float[Tensor, "*head d_in d_out"]) -> float:
    """Share of the variance of ``log |grad|`` explained by an additive row effect plus an additive
    column effect (per leading head index; 1.0 for an exact outer product). Zero gradients are
    left out."""
    a = _matrix_view(grad.abs().double())
    pos = a[a > 0]
    if pos.numel() == 0:
        return float("nan")
    logs = a.clamp_min(float(pos.min())).log()
    grand = logs.mean((-2, -1), keepdim=True)
    fit = logs.mean(-1, keepdim=True) + logs.mean(-2, keepdim=True) - grand
    total = ((logs - grand) ** 2).sum()
    if float(total) == 0.0:
        return 1.0
    return float(1.0 - ((logs - fit) ** 2).sum() / total)


def top_weight_mask(scores: Mapping[str, Tensor], count: int) -> dict[str, Bool[Tensor, "..."]]:
    """The ``count`` highest scores over every tensor of ``scores`` together, as one boolean mask
    per name (ties broken by :func:`torch.topk`)."""
    if not scores:
        raise InputError("top_weight_mask got no scores")
    flat = torch.cat([v.detach().flatten().float() for v in scores.values()])
    if not 0 < count <= flat.numel():
        raise InputError(f"count must be in 1..{flat.numel()}, got {count}")
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.topk(flat, count, sorted=False).indices] = True
    out, offset = {}, 0
    for name, v in scores.items():
        out[name] = chosen[offset : offset + v.numel()].view(v.shape)
        offset += v.numel()
    return out


def _check_same_weights(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> None:
    if set(a) != set(b):
        raise InputError(f"the masks cover different weights: {sorted(set(a) ^ set(b))[:3]}")


def mask_recall(found: Mapping[str, Tensor], planted: Mapping[str, Tensor]) -> float:
    """Share of the planted weights that ``found`` marks (both masks over the same names)."""
    _check_same_weights(found, planted)
    total = sum(int(planted[k].sum()) for k in planted)
    if total == 0:
        raise InputError("the planted mask is empty")
    return sum(int((found[k] & planted[k]).sum()) for k in planted) / total


def mask_jaccard(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """Jaccard index of two weight masks over the same names."""
    _check_same_weights(a, b)
    both = sum(int((a[k] & b[k]).sum()) for k in a)
    either = sum(int((a[k] | b[k]).sum()) for k in a)
    return both / either if either else float("nan")
