"""The weights a sparse fine-tuning run may change: one boolean tensor per trainable parameter,
with where they sit (per layer and parameter) and how two masks overlap."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool
from torch import Tensor

from memlens.core.components import layer_of
from memlens.core.errors import InputError
from memlens.core.results import Provenance, Result

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go


@dataclass(frozen=True, kw_only=True)
class SparseMask(Result):
    """A mask over the trainable weights (:meth:`SparseFineTuner.make_mask`).

    Attributes:
        masks: a boolean tensor per parameter name, shaped as the parameter; True = may change.
        mask_kind: ``topk``, ``selective``, ``random``, ``all`` or ``user``.
        fraction: the share of weights asked for (None for ``all`` and user masks).
        seed: the seed of a random draw (None otherwise).
        provenance: model, versions and the settings that drew it.
    """

    masks: dict[str, Bool[Tensor, "..."]]
    mask_kind: str
    fraction: float | None = None
    seed: int | None = None
    provenance: Provenance = field(default_factory=Provenance)

    @property
    def n_selected(self) -> int:
        """Weights the mask lets change."""
        return sum(int(m.sum()) for m in self.masks.values())

    @property
    def n_total(self) -> int:
        """Weights of the trainable set."""
        return sum(m.numel() for m in self.masks.values())

    def jaccard(self, other: "SparseMask") -> float:
        """|A and B| / |A or B| over all weights (1.0 for two empty masks)."""
        if set(self.masks) != set(other.masks):
            raise InputError("the two masks cover different parameters")
        inter = sum(int((m & other.masks[n]).sum()) for n, m in self.masks.items())
        union = sum(int((m | other.masks[n]).sum()) for n, m in self.masks.items())
        return inter / union if union else 1.0

    def to_dataframe(self) -> "pd.DataFrame":
        """One row per parameter: ``parameter, layer, selected, total, share`` (share of the
        parameter's weights selected)."""
        import pandas as pd

        rows = [{"parameter": n, "layer": layer_of(n), "selected": int(m.sum()), "total": m.numel(),
                 "share": int(m.sum()) / max(1, m.numel())} for n, m in self.masks.items()]
        return pd.DataFrame(rows, columns=["parameter", "layer", "selected", "total", "share"])

    def layer_counts(self) -> Tensor:
        """Selected weights per block (index = layer; parameters outside the blocks left out)."""
        layers = [layer_of(n) for n in self.masks]
        out = torch.zeros(max(layers) + 1 if layers and max(layers) >= 0 else 0, dtype=torch.long)
        for n, m in self.masks.items():
            if layer_of(n) >= 0:
                out[layer_of(n)] += int(m.sum())
        return out

    def summary(self) -> dict[str, Any]:
        """Kind, size and the share of the selected weights in each layer."""
        counts = self.layer_counts()
        n = max(1, self.n_selected)
        return {"mask_kind": self.mask_kind, "fraction": self.fraction, "n_selected": self.n_selected,
                "n_total": self.n_total, "layer_share": [round(int(c) / n, 4) for c in counts]}

    def plot(self) -> "go.Figure":
        """Selected weights per layer, one bar segment per parameter."""
        from memlens.viz.masks import plot_mask_layers

        return plot_mask_layers(self.to_dataframe(), f"{self.mask_kind} mask: {self.n_selected:,} of {self.n_total:,} weights")
