"""Per-example weight gradients of linear layers from one backward pass: for a Linear ``W [out,
in]`` the gradient of example ``i``'s loss is ``G_i^T X_i`` (its output gradient times its input,
summed over positions); for a GPT-2 ``Conv1D`` ``W [in, out]`` it is ``X_i^T G_i``. Used where
every component weight is such a layer (HuggingFace models under the bridge), so per-paragraph
gradient maps need one pass per batch instead of one per paragraph.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Callable, Iterator

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from memlens.core.components import ComponentRegistry
    from memlens.core.model import HookedModel


def linear_owners(model: "HookedModel", registry: "ComponentRegistry") -> dict[int, nn.Module] | None:
    """For each component parameter (by ``id``), the Linear/Conv1D module whose weight it is; None
    when some component weight is not such a module's (or the model has no HuggingFace modules)."""
    hf = model.hf_model
    if hf is None:
        return None
    by_param: dict[int, nn.Module] = {}
    for mod in hf.modules():
        w = getattr(mod, "weight", None)
        if isinstance(w, nn.Parameter) and (isinstance(mod, nn.Linear) or type(mod).__name__ == "Conv1D"):
            by_param[id(w)] = mod
    params = {id(s.param) for c in registry for s in c.slices}
    if not params <= set(by_param):
        return None
    return {i: by_param[i] for i in params}


@contextlib.contextmanager
def captured_linear_io(owners: dict[int, nn.Module]) -> Iterator[tuple[dict[int, Tensor], dict[int, Tensor]]]:
    """Hooks on every owner module that keep its input and, on backward, its output gradient (by
    parameter id) in the two dicts yielded; removed on exit, also on error."""
    inputs: dict[int, Tensor] = {}
    out_grads: dict[int, Tensor] = {}

    def keep(pid: int) -> Callable:
        def hook(mod: nn.Module, args: tuple, out: Tensor) -> None:
            inputs[pid] = args[0].detach()
            out.register_hook(lambda g: out_grads.__setitem__(pid, g.detach()))

        return hook

    handles = [mod.register_forward_hook(keep(pid)) for pid, mod in owners.items()]
    try:
        yield inputs, out_grads
    finally:
        for h in handles:
            h.remove()


def per_example_weight_grads(owners: dict[int, nn.Module], inputs: dict[int, Tensor],
                             out_grads: dict[int, Tensor]) -> dict[int, Tensor]:
    """``[batch, *weight.shape]`` gradients per parameter id from the captured inputs ``X [b, t,
    in]`` and output gradients ``G [b, t, out]``: ``G^T X`` for a Linear, ``X^T G`` for a Conv1D."""
    out = {}
    for pid, mod in owners.items():
        x, g = inputs[pid], out_grads[pid]
        if x.dtype != g.dtype:  # bf16-mixed: a bfloat16 product (as autograd's), returned as float32
            x, g = x.to(g.dtype), g
        if isinstance(mod, nn.Linear):
            grad = torch.einsum("bto,bti->boi", g, x)
        else:
            grad = torch.einsum("bti,bto->bio", x, g)
        out[pid] = grad.float() if grad.dtype != mod.weight.dtype and mod.weight.dtype == torch.float32 else grad
    return out
