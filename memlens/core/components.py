"""The component registry: (layer, kind, head) -> the slices of parameters that component owns.

The paper's trainable set per layer is W_Q, W_K, W_V, W_O for every head and W_in, W_out of the
MLP, so a layer has ``n_heads * 4 + 2`` components. Each component maps to one or more
:class:`WeightSlice` (a parameter, a dimension and a range along it), so its weights, their
gradients or a mask can be read and written in place, whatever the architecture stores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from memlens.core.errors import InputError

HEAD_KINDS = ("W_Q", "W_K", "W_V", "W_O")
MLP_KINDS = ("W_in", "W_out")
KINDS = HEAD_KINDS + MLP_KINDS


class ComponentKey(NamedTuple):
    """A component: ``head`` is -1 for the MLP matrices W_in and W_out."""

    layer: int
    kind: str
    head: int = -1


@dataclass(frozen=True)
class WeightSlice:
    """``param.narrow(dim, start, stop - start)``: the part of a parameter that a component owns."""

    param: nn.Parameter
    param_name: str
    dim: int
    start: int
    stop: int

    def of(self, tensor: Tensor) -> Tensor:
        """The same slice of any tensor shaped like the parameter (its gradient, a mask)."""
        return tensor.narrow(self.dim, self.start, self.stop - self.start)

    @property
    def numel(self) -> int:
        return self.param.numel() // self.param.shape[self.dim] * (self.stop - self.start)

    @property
    def identity(self) -> tuple[int, int, int, int]:
        """What makes two slices the same weights (grouped-query heads share their k/v slices)."""
        return id(self.param), self.dim, self.start, self.stop


@dataclass(frozen=True)
class Component:
    key: ComponentKey
    slices: tuple[WeightSlice, ...]

    @property
    def numel(self) -> int:
        return sum(s.numel for s in self.slices)

    def weights(self) -> list[Tensor]:
        """Views of the component's weights (writing to them writes the model)."""
        return [s.of(s.param.data) for s in self.slices]

    def grads(self) -> list[Tensor] | None:
        """Views of the gradients on the component's weights, or None before a backward pass."""
        if any(s.param.grad is None for s in self.slices):
            return None
        return [s.of(s.param.grad) for s in self.slices]


class ComponentRegistry:
    """Every component of a model, in canonical order: by layer, then W_Q, W_K, W_V, W_O for each
    head (head-major within a kind), then W_in and W_out."""

    def __init__(self, components: Sequence[Component], n_layers: int, n_heads: int) -> None:
        self.components = list(components)
        self.n_layers = n_layers
        self.n_heads = n_heads
        self._index = {c.key: i for i, c in enumerate(self.components)}

    def __len__(self) -> int:
        return len(self.components)

    def __iter__(self) -> Iterator[Component]:
        return iter(self.components)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __getitem__(self, key: ComponentKey | tuple) -> Component:
        key = self.key(*key)
        return self.components[self._index[key]]

    def key(self, layer: int, kind: str, head: int = -1) -> ComponentKey:
        """Validate and normalise a component key; raise an :class:`InputError` that says why not."""
        if kind not in KINDS:
            raise InputError(f"unknown component kind {kind!r}; expected one of {KINDS}")
        if not 0 <= layer < self.n_layers:
            raise InputError(f"layer {layer} out of range; the model has {self.n_layers} layers")
        if kind in MLP_KINDS:
            if head not in (-1, None):
                raise InputError(f"{kind} belongs to the MLP and has no head; pass head=-1")
            return ComponentKey(layer, kind, -1)
        if not 0 <= head < self.n_heads:
            raise InputError(f"head {head} out of range; the model has {self.n_heads} heads per layer")
        return ComponentKey(layer, kind, head)

    def index(self, key: ComponentKey | tuple) -> int:
        return self._index[self.key(*key)]

    @property
    def keys(self) -> list[ComponentKey]:
        return [c.key for c in self.components]

    @property
    def parameters(self) -> list[nn.Parameter]:
        """The distinct parameters that components own (the paper's trainable set)."""
        seen: dict[int, nn.Parameter] = {}
        for c in self.components:
            for s in c.slices:
                seen.setdefault(id(s.param), s.param)
        return list(seen.values())

    @property
    def numel(self) -> int:
        """Distinct scalar weights owned by components: under grouped-query attention the query
        heads of one group share their W_K / W_V slices, which count once."""
        seen = {s.identity: s.numel for c in self.components for s in c.slices}
        return sum(seen.values())

    def shared_with(self, key: ComponentKey | tuple) -> list[ComponentKey]:
        """The other components that own exactly the same weights (grouped-query W_K / W_V)."""
        mine = {s.identity for s in self[key].slices}
        k = self.key(*key)
        return [c.key for c in self.components if c.key != k and {s.identity for s in c.slices} == mine]


# --- architecture mappings -----------------------------------------------------------------

ParamLookup = Callable[[str], nn.Parameter]


def _heads(
    get: ParamLookup, name: str, dim: int, n_heads: int, d_head: int, offset: int = 0, stride: int | None = None
) -> list[WeightSlice]:
    stride = d_head if stride is None else stride
    p = get(name)
    return [WeightSlice(p, name, dim, offset + h * stride, offset + h * stride + d_head) for h in range(n_heads)]


def _whole(get: ParamLookup, name: str) -> WeightSlice:
    p = get(name)
    return WeightSlice(p, name, 0, 0, p.shape[0])


def _layer_components(layer: int, per_kind: dict[str, list[list[WeightSlice]]]) -> list[Component]:
    out = []
    for kind in HEAD_KINDS:
        for h, slices in enumerate(per_kind[kind]):
            out.append(Component(ComponentKey(layer, kind, h), tuple(slices)))
    for kind in MLP_KINDS:
        out.append(Component(ComponentKey(layer, kind, -1), tuple(per_kind[kind][0])))
    return out


def build_hf_registry(
    model_type: str, get: ParamLookup, n_layers: int, n_heads: int, d_head: int, n_kv_heads: int | None = None
) -> ComponentRegistry:
    """The registry of a booted HuggingFace causal LM, from its parameter names (bridge prefixes
    removed) as :data:`memlens.core.architectures.ARCHITECTURES` lists them.

    Grouped-query models (fewer key/value heads) give each query head the slice of its key/value
    group, so heads of one group share their W_K and W_V slices. A gated MLP's W_in owns both its
    gate and its up projection.
    """
    from memlens.core.architectures import architecture

    arch = architecture(model_type)
    kv = (n_kv_heads or n_heads) if arch.grouped_query else n_heads
    group = n_heads // kv
    comps: list[Component] = []
    for L in range(n_layers):
        name = {k: getattr(arch, k).format(layer=L) for k in ("q", "k", "v", "o", "mlp_out")}
        k_heads = _heads(get, name["k"], 0, kv, d_head)
        v_heads = _heads(get, name["v"], 0, kv, d_head)
        per = {
            "W_Q": [[s] for s in _heads(get, name["q"], 0, n_heads, d_head)],
            "W_K": [[k_heads[h // group]] for h in range(n_heads)],
            "W_V": [[v_heads[h // group]] for h in range(n_heads)],
            "W_O": [[s] for s in _heads(get, name["o"], arch.o_head_dim, n_heads, d_head)],
            "W_in": [[_whole(get, n.format(layer=L)) for n in arch.mlp_in]],
            "W_out": [[_whole(get, name["mlp_out"])]],
        }
        comps.extend(_layer_components(L, per))
    return ComponentRegistry(comps, n_layers, n_heads)


def build_tl3_registry(tl_model: nn.Module) -> ComponentRegistry:
    """The registry of a TransformerLens 3 ``HookedTransformer`` (weights ``[n_heads, d_model, d_head]``)."""
    cfg = tl_model.cfg
    params = dict(tl_model.named_parameters())

    def get(name: str) -> nn.Parameter:
        return params[name]

    comps: list[Component] = []
    for L in range(cfg.n_layers):
        per: dict[str, list[list[WeightSlice]]] = {}
        for kind in HEAD_KINDS:
            name = f"blocks.{L}.attn.{kind}"
            if name not in params:  # grouped-query attention stores _W_K, _W_V per key/value head
                name = f"blocks.{L}.attn._{kind}"
            p = get(name)
            group = cfg.n_heads // p.shape[0]
            per[kind] = [[WeightSlice(p, name, 0, h // group, h // group + 1)] for h in range(cfg.n_heads)]
        per["W_in"] = [[_whole(get, f"blocks.{L}.mlp.W_in")]]
        per["W_out"] = [[_whole(get, f"blocks.{L}.mlp.W_out")]]
        comps.extend(_layer_components(L, per))
    return ComponentRegistry(comps, cfg.n_layers, cfg.n_heads)


def empty_mask_like(registry: ComponentRegistry) -> dict[str, Tensor]:
    """An all-False boolean mask per owned parameter name."""
    return {
        s.param_name: torch.zeros_like(s.param, dtype=torch.bool)
        for c in registry
        for s in c.slices
    }


def check_head(layer: int, head: int, n_layers: int, n_heads: int) -> None:
    """Raise an :class:`~memlens.errors.InputError` unless (layer, head) names a head of a model
    of ``n_layers`` x ``n_heads``."""
    if not 0 <= layer < n_layers:
        raise InputError(f"layer {layer} is out of range: the model has layers 0..{n_layers - 1}")
    if not 0 <= head < n_heads:
        raise InputError(f"head {head} is out of range: the model has heads 0..{n_heads - 1}")


def layer_of(param_name: str) -> int:
    """The block index in a parameter's name (``transformer.h.3.mlp.c_fc.weight`` -> 3); -1 for
    parameters outside the blocks."""
    for part in param_name.split("."):
        if part.isdigit():
            return int(part)
    return -1
