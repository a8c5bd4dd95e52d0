"""MLP neurons: where each neuron's weights sit and where its activation flows.

Neuron ``n`` of layer ``L`` is one hidden unit of that layer's MLP: it owns slice ``n`` along the
hidden axis of every input weight (``W_in``: the up projection, and for gated MLPs the gate
projection too; its *input weights*) and of the output weight (``W_out``; its *output weights*).
Its activation is entry ``n`` of the last axis of the input of the output projection, the hook
:meth:`NeuronLayout.hook_name`. Biases are not part of a neuron here (they stay frozen, as in the
paper's trainable set).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from memlens.core.errors import InputError

if TYPE_CHECKING:
    from memlens.core.model import HookedModel


@dataclass(frozen=True)
class NeuronSlice:
    """The neurons' axis of one MLP weight: neuron ``n`` owns ``param.select(axis, n)``."""

    param: nn.Parameter
    param_name: str
    axis: int
    role: str  # "in" or "out"


class NeuronLayout:
    """The MLP neurons of a model: ``n_layers`` x ``d_mlp``, their weights and their activation hooks.

    Example::

        layout = NeuronLayout(model)
        masks = layout.weight_mask(neurons)         # bool [layer, d_mlp] -> one mask per parameter
        with layout.dropped(neurons):               # their activations zeroed while the block runs
            logits = model(tokens)
    """

    def __init__(self, model: "HookedModel") -> None:
        if not model.d_mlp:
            raise InputError(f"{model.name} has no MLP width (d_mlp) in its config; it has no neurons to localize")
        self.model = model
        self.n_layers = model.n_layers
        self.d_mlp = int(model.d_mlp)
        reg = model.components
        self.slices: list[list[NeuronSlice]] = []
        for L in range(self.n_layers):
            layer = []
            for kind, role in (("W_in", "in"), ("W_out", "out")):
                for s in reg[(L, kind)].slices:
                    layer.append(NeuronSlice(s.param, s.param_name, self._axis(s.param, s.param_name, role), role))
            self.slices.append(layer)
        self._hooks = [self._find_hook(L) for L in range(self.n_layers)]

    # --- geometry ----------------------------------------------------------------------------
    def _axis(self, param: nn.Parameter, name: str, role: str) -> int:
        dims = [i for i, n in enumerate(param.shape) if n == self.d_mlp]
        if len(dims) == 1:
            return dims[0]
        if len(dims) == 2:  # a square MLP weight: the module type says which axis is the hidden one
            conv1d = type(self._owner(name)).__name__ == "Conv1D" if self.model.hf_model is not None else True
            # Conv1D and TransformerLens store [in, out]; nn.Linear stores [out, in]
            return (1 if role == "in" else 0) if conv1d else (0 if role == "in" else 1)
        raise InputError(f"{name} has shape {tuple(param.shape)}, no axis of the MLP width {self.d_mlp}")

    def _owner(self, name: str) -> nn.Module:
        from memlens.core.compat import strip_bridge_name

        for mod_name, mod in self.model.hf_model.named_modules():
            for pname, p in mod.named_parameters(recurse=False):
                if strip_bridge_name(f"{mod_name}.{pname}") == name:
                    return mod
        raise InputError(f"no module owns {name}")

    def _find_hook(self, layer: int) -> str:
        names = set(self.model.hook_names)
        for name in (f"blocks.{layer}.mlp.out.hook_in", f"blocks.{layer}.mlp.hook_post"):
            if name in names:
                return name
        raise InputError(f"{self.model.name} has no hook on the MLP neurons of layer {layer} "
                         "(blocks.L.mlp.out.hook_in or blocks.L.mlp.hook_post)")

    def hook_name(self, layer: int) -> str:
        """The hook whose last axis is layer ``layer``'s neuron activations (the input of its output
        projection)."""
        return self._hooks[layer]

    @property
    def n_neurons(self) -> int:
        return self.n_layers * self.d_mlp

    @property
    def weights_per_neuron(self) -> int:
        """Input plus output weights of one neuron (the same in every layer)."""
        return sum(s.param.numel() // s.param.shape[s.axis] for s in self.slices[0])

    def check(self, neurons: Tensor, what: str = "neurons") -> Bool[Tensor, "layer neuron"]:
        """``neurons`` as a boolean ``[n_layers, d_mlp]`` tensor, or an :class:`InputError`."""
        t = torch.as_tensor(neurons)
        if tuple(t.shape) != (self.n_layers, self.d_mlp):
            raise InputError(f"{what} must be [{self.n_layers}, {self.d_mlp}] (layers x MLP width), got {tuple(t.shape)}")
        return t.to(torch.bool)

    # --- neurons <-> weights ------------------------------------------------------------------
    def weight_mask(self, neurons: Bool[Tensor, "layer neuron"]) -> dict[str, Bool[Tensor, "..."]]:
        """One boolean mask per MLP parameter: True on the input and output weights of ``neurons``."""
        neurons = self.check(neurons)
        out: dict[str, Tensor] = {}
        for L, layer in enumerate(self.slices):
            for s in layer:
                shape = [1] * s.param.ndim
                shape[s.axis] = self.d_mlp
                out[s.param_name] = neurons[L].view(shape).expand(s.param.shape).clone()
        return out

    def per_neuron(self, weight_scores: dict[str, Tensor], reduce: str = "max") -> Float[Tensor, "layer neuron"]:
        """Per-weight scores (e.g. |gradient|, by parameter name) reduced to one score per neuron over
        its input and output weights: ``max`` or ``sum``."""
        if reduce not in ("max", "sum"):
            raise InputError(f"reduce must be 'max' or 'sum', got {reduce!r}")
        out = torch.zeros(self.n_layers, self.d_mlp)
        for L, layer in enumerate(self.slices):
            for s in layer:
                if s.param_name not in weight_scores:
                    raise InputError(f"no scores for {s.param_name}")
                w = weight_scores[s.param_name].float().movedim(s.axis, 0).reshape(self.d_mlp, -1)
                part = w.amax(1) if reduce == "max" else w.sum(1)
                out[L] = torch.maximum(out[L], part.cpu()) if reduce == "max" else out[L] + part.cpu()
        return out

    # --- activations -------------------------------------------------------------------------
    @contextlib.contextmanager
    def dropped(self, neurons: Bool[Tensor, "layer neuron"]) -> Iterator["HookedModel"]:
        """Zero the activations of ``neurons`` at every position while the block runs (hooks removed
        on exit). Equals zeroing their output weights."""
        neurons = self.check(neurons)
        hooks = []
        for L in range(self.n_layers):
            keep = (~neurons[L]).float()
            if bool(keep.all()):
                continue

            def hook(act: Tensor, hook: Any, keep: Tensor = keep) -> Tensor:
                return act * keep.to(act.device, act.dtype)

            hooks.append((self.hook_name(L), hook))
        with self.model.hooks(fwd_hooks=hooks):
            yield self.model

    @contextlib.contextmanager
    def gated(self, gates: Float[Tensor, "layer neuron"] | Float[Tensor, "batch layer neuron"]) -> Iterator["HookedModel"]:
        """Multiply each neuron's activation by its gate while the block runs (differentiable in the
        gates; ``[batch, layer, neuron]`` gates give each row of the batch its own)."""
        hooks = []
        for L in range(self.n_layers):
            def hook(act: Tensor, hook: Any, L: int = L) -> Tensor:
                g = gates[..., L, :].to(act.device, act.dtype)
                return act * (g[:, None, :] if g.ndim == 2 else g)

            hooks.append((self.hook_name(L), hook))
        with self.model.hooks(fwd_hooks=hooks):
            yield self.model


def random_neurons(n_layers: int, d_mlp: int, ratio: float, seed: int) -> Bool[Tensor, "layer neuron"]:
    """``max(1, round(ratio * d_mlp))`` neurons drawn uniformly in every layer (seeded)."""
    if not (isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and 0 < ratio < 1):
        raise InputError(f"ratio must be in (0, 1), got {ratio!r}")
    g = torch.Generator().manual_seed(seed)
    k = max(1, int(round(ratio * d_mlp)))
    out = torch.zeros(n_layers, d_mlp, dtype=torch.bool)
    for L in range(n_layers):
        out[L, torch.randperm(d_mlp, generator=g)[:k]] = True
    return out


def top_neurons(scores: Float[Tensor, "layer neuron"], per_layer: Any) -> Bool[Tensor, "layer neuron"]:
    """The ``per_layer`` highest-scoring neurons of each layer (``per_layer`` an int, or one count per
    layer); ties go to the lower index. NaN scores rank last."""
    from memlens.core.errors import InputError

    n_layers, d_mlp = scores.shape
    if isinstance(per_layer, bool) or not isinstance(per_layer, (int, Tensor)):
        raise InputError(f"per_layer must be a count of neurons (an integer 0..{d_mlp}) or a tensor of one count per "
                         f"layer, got {per_layer!r}")
    counts = torch.as_tensor(per_layer)
    if counts.is_floating_point() or counts.is_complex() or counts.dtype == torch.bool:
        raise InputError(f"per_layer must hold integer counts of neurons, got a {counts.dtype} tensor")
    counts = counts.expand(n_layers) if counts.ndim == 0 else counts
    if counts.shape != (n_layers,) or bool((counts < 0).any()) or bool((counts > d_mlp).any()):
        raise InputError(f"per_layer must be a count in 0..{d_mlp} (or {n_layers} of them, one per layer), got "
                         f"{per_layer.tolist() if isinstance(per_layer, Tensor) else per_layer!r}")
    scores = torch.nan_to_num(scores.float(), nan=-float("inf"))
    out = torch.zeros_like(scores, dtype=torch.bool)
    for L in range(scores.shape[0]):
        k = int(counts[L])
        if k:
            order = torch.sort(scores[L], descending=True, stable=True).indices
            out[L, order[:k]] = True
    return out
