"""Round-to-nearest (RTN) weight quantization, simulated in float: what a model deployed in int8 or
int4 computes with.

A weight matrix ``W [out, in]`` is cut into groups along its input dimension (one group per output
row: *per channel*; or ``group_size`` consecutive inputs: *group-wise*, GPTQ's and AWQ's 128); each
group gets a scale (and, asymmetric, a zero point) from its min and max, zero always representable:

- symmetric: ``scale = max(|min|, |max|) / ((2**bits - 1) / 2)``, zero point 0;
- asymmetric: ``scale = (max - min) / (2**bits - 1)``, ``zero = round(q_min - min / scale)``;

then ``q = clamp(round(w / scale + zero), -2**(bits-1), 2**(bits-1) - 1)`` and the weight becomes
``(q - zero) * scale``. These are the integer conventions of compressed-tensors (vLLM /
llm-compressor, GPTQ's RTN baseline); the test suite compares the two. A weight moves by at most
half a *bin* (``scale``) unless it is clipped; an unlearning update smaller than half a bin can be
rounded away (Zhang et al., ICLR 2025).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from memlens.core.errors import InputError


@dataclass(frozen=True)
class QuantScheme:
    """One RTN quantization scheme.

    Attributes:
        bits: 8 or 4 (any of 2..8 works).
        group_size: inputs per group; None: one group per output channel (row).
        symmetric: symmetric (zero point 0, bitsandbytes / GPTQ ``sym=True``) or asymmetric.
    """

    bits: int = 4
    group_size: int | None = 128
    symmetric: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise InputError(f"bits must be an integer from 2 to 8, got {self.bits!r}")
        if self.group_size is not None and (isinstance(self.group_size, bool) or not isinstance(self.group_size, int)
                                            or self.group_size < 1):
            raise InputError(f"group_size must be an integer >= 1 or None (per channel), got {self.group_size!r}")

    @property
    def name(self) -> str:
        """``int4-g128-sym``, ``int8-channel-asym``, ..."""
        group = f"g{self.group_size}" if self.group_size else "channel"
        return f"int{self.bits}-{group}-{'sym' if self.symmetric else 'asym'}"

    @classmethod
    def parse(cls, name: str) -> "QuantScheme":
        """The scheme a :attr:`name` names."""
        parts = str(name).split("-")
        try:
            bits_s, group_s, kind = parts
            if not bits_s.startswith("int") or kind not in ("sym", "asym"):
                raise ValueError
            group = None if group_s == "channel" else int(group_s.removeprefix("g")) if group_s.startswith("g") else None
            if group is None and group_s != "channel":
                raise ValueError
            return cls(int(bits_s[3:]), group, kind == "sym")
        except ValueError:
            raise InputError(f"unknown quantization scheme {name!r}; write int<bits>-<channel|g<size>>-<sym|asym>, "
                             "e.g. int4-g128-sym") from None


#: the schemes of the resurfacing audit: int8 and int4, per channel and group-wise (128), symmetric and asymmetric
SCHEMES: tuple[QuantScheme, ...] = tuple(QuantScheme(b, g, s) for b in (8, 4) for g in (None, 128) for s in (True, False))


def _groups(w: Tensor, group_size: int | None) -> tuple[Tensor, int]:
    """``w [out, in]`` as ``[out, n_groups, group]`` (the last group zero-padded) and the padding."""
    out, inp = w.shape
    size = inp if group_size is None else min(group_size, inp)
    n = -(-inp // size)
    pad = n * size - inp
    if pad:
        w = torch.cat([w, w.new_zeros(out, pad)], dim=1)
    return w.view(out, n, size), pad


def quantization_params(w: Float[Tensor, "out inp"], scheme: QuantScheme) -> tuple[Tensor, Tensor]:
    """Scale and zero point per group, ``[out, n_groups]`` each (float32), from the groups' min
    and max (padding of a partial last group excluded)."""
    g, pad = _groups(w.float(), scheme.group_size)
    lo, hi = g.amin(-1), g.amax(-1)
    if pad:  # the zero padding must not widen the last group's range
        last = w.float()[:, -(g.shape[-1] - pad):]
        lo[:, -1], hi[:, -1] = last.amin(-1), last.amax(-1)
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    q_min, q_max = -(2 ** (scheme.bits - 1)), 2 ** (scheme.bits - 1) - 1
    levels = float(q_max - q_min)
    if scheme.symmetric:
        scale = torch.maximum(lo.abs(), hi.abs()) / (levels / 2)
        zero = torch.zeros_like(scale)
    else:
        scale = (hi - lo) / levels
        zero = torch.round(torch.clamp(q_min - lo / torch.where(scale == 0, 1.0, scale), q_min, q_max))
    scale = torch.where(scale == 0, torch.finfo(torch.float32).eps, scale)
    return scale, zero


def quantize_dequantize(w: Float[Tensor, "out inp"], scheme: QuantScheme) -> tuple[Float[Tensor, "out inp"],
                                                                                     Float[Tensor, "out inp"]]:
    """RTN quantize then dequantize ``w`` (a 2-D weight, ``[out, in]``; groups run along ``in``).

    Returns:
        The dequantized weight (``w``'s dtype) and the bin width (the group's scale) of every
        element, in the weight's units.
    """
    if w.ndim != 2:
        raise InputError(f"quantize a 2-D weight [out, in], got shape {tuple(w.shape)}")
    scale, zero = quantization_params(w, scheme)
    g, pad = _groups(w.float(), scheme.group_size)
    q_min, q_max = -(2 ** (scheme.bits - 1)), 2 ** (scheme.bits - 1) - 1
    q = torch.clamp(torch.round(g / scale[..., None] + zero[..., None]), q_min, q_max)
    deq = ((q - zero[..., None]) * scale[..., None]).flatten(1)
    step = scale[..., None].expand_as(g).flatten(1)
    if pad:
        deq, step = deq[:, :-pad], step[:, :-pad]
    return deq.to(w.dtype), step.contiguous()
