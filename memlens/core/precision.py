"""Compute precision: exact float32, or bfloat16 compute on float32 master weights (``bf16-mixed``).

A :class:`~memlens.core.model.HookedModel` carries a precision (``model.precision``). Under
``bf16-mixed`` its forward passes (the TransformerLens model and the HuggingFace twin that decodes
greedily) run inside ``torch.autocast(device, bfloat16)``: matmuls compute in bfloat16, their
backward too, while the weights stay float32 and the logits come back as float32, so losses, KL,
softmax statistics, EM/NLL comparisons and optimizer updates are float32 as before. Under ``fp32``
nothing changes (results are bit for bit those of a memlens without this module).

Every analysis takes ``precision=`` (its constructor, or a keyword of the functions that take a
model: :func:`with_precision`); ``None`` means the model's own.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, Callable, ContextManager, TypeVar

import torch

from memlens.core.defaults import PRECISIONS, Precision, one_of
from memlens.core.errors import InputError

F = TypeVar("F", bound=Callable[..., Any])

#: the dtype the matmuls of ``bf16-mixed`` compute in
LOW_DTYPE = torch.bfloat16


def check_precision(value: Any, where: str = "precision") -> Precision:
    """``value`` if it is a precision memlens knows, else an :class:`InputError` naming ``where``."""
    if not isinstance(value, str) or value not in PRECISIONS:
        raise InputError(f"{where} must be {one_of(PRECISIONS)}, got {value!r}")
    return value  # type: ignore[return-value]


def autocast(device: torch.device, precision: str) -> ContextManager[Any]:
    """The compute context of ``precision`` on ``device``: nothing for ``fp32``, bfloat16 autocast
    for ``bf16-mixed`` (CPU or CUDA)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=LOW_DTYPE)


def with_precision(fn: F) -> F:
    """Give a function whose first argument is a model a keyword ``precision=None``: the call runs
    with the model at that precision (its own when None) and the model's precision is put back
    after it, also on error."""
    sig = inspect.signature(fn)
    if "precision" in sig.parameters:
        raise TypeError(f"{fn.__name__} has a precision parameter already")

    @functools.wraps(fn)
    def wrapped(model: Any, *args: Any, precision: str | None = None, **kwargs: Any) -> Any:
        if not hasattr(model, "using_precision"):
            if precision is not None:
                check_precision(precision)
            return fn(model, *args, **kwargs)
        with model.using_precision(precision):
            return fn(model, *args, **kwargs)

    params = list(sig.parameters.values())
    keyword = inspect.Parameter("precision", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="str | None")
    if params and params[-1].kind is inspect.Parameter.VAR_KEYWORD:
        params.insert(len(params) - 1, keyword)
    else:
        params.append(keyword)
    wrapped.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    if wrapped.__doc__:
        wrapped.__doc__ += ("\n\n    The keyword ``precision`` (``fp32`` or ``bf16-mixed``; default: the model's own) sets the\n"
                            "    compute precision of this call (docs/precision.md).")
    return wrapped  # type: ignore[return-value]
