"""Gradient similarity (the official code's ``cosine distance`` notebook): per component, the
cosine similarity between the parameter gradient of one set's NLL (memorized paragraphs) and of
another's (non-memorized). Where the two sets pull a component's weights the same way the cosine
is near 1; where memorized paragraphs use a component differently it falls towards 0 or below.
The map sits beside the magnitude maps of :class:`~memlens.analyses.gradients.GradientMap`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from memlens.analyses.base import Analysis
from memlens.analyses.gradients import GradientMap, GradientMapResult
from memlens.core.components import ComponentKey
from memlens.core.data import ParagraphSet
from memlens.core.errors import InputError
from memlens.core.results import Provenance, Result

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from memlens.core.model import HookedModel


@dataclass(frozen=True, kw_only=True)
class GradientSimilarityResult(Result):
    """Cosine similarity per component between two sets' NLL gradients.

    Attributes:
        keys: the components (layer, kind, head; head -1 for W_in / W_out), in registry order.
        cosine: the cosine similarity per component, in [-1, 1] (NaN where a gradient is zero).
        n_layers, n_heads: the model's shape.
        labels: the two sets' names; n_paragraphs: their sizes.
        provenance: model, versions and the settings.
    """

    keys: list[ComponentKey]
    cosine: Float[Tensor, " n_components"] = field(repr=False)
    n_layers: int
    n_heads: int
    labels: tuple[str, str] = ("memorized", "non_memorized")
    n_paragraphs: tuple[int, int] = (0, 0)
    provenance: Provenance = field(default_factory=Provenance)

    def to_dataframe(self) -> "pd.DataFrame":
        """One row per component: ``layer, component, head, cosine``."""
        import pandas as pd

        return pd.DataFrame({"layer": [k.layer for k in self.keys], "component": [k.kind for k in self.keys],
                             "head": [k.head for k in self.keys], "cosine": self.cosine.tolist()})

    def grid(self, kind: str) -> Float[Tensor, "n_layers n_heads"]:
        """The cosines of one kind as ``[layer, head]`` (``[layer, 1]`` for W_in / W_out)."""
        width = 1 if kind in ("W_in", "W_out") else self.n_heads
        out = torch.full((self.n_layers, width), float("nan"))
        for k, c in zip(self.keys, self.cosine.tolist()):
            if k.kind == kind:
                out[k.layer, max(k.head, 0)] = c
        return out

    def by_layer(self) -> "pd.DataFrame":
        """Mean cosine per layer and component kind (rows: layers; columns: kinds)."""
        return self.to_dataframe().pivot_table(index="layer", columns="component", values="cosine", aggfunc="mean")

    def summary(self) -> dict[str, Any]:
        """Mean cosine per kind, the least similar component and the labels."""
        df = self.to_dataframe().dropna(subset=["cosine"])
        low = df.sort_values("cosine").iloc[0] if len(df) else None
        return {"labels": list(self.labels), "n_paragraphs": list(self.n_paragraphs),
                "mean_by_kind": {k: round(float(v), 4) for k, v in df.groupby("component")["cosine"].mean().items()},
                "mean": round(float(df["cosine"].mean()), 4) if len(df) else float("nan"),
                "least_similar": None if low is None else {"layer": int(low["layer"]), "component": str(low["component"]),
                                                           "head": int(low["head"]), "cosine": round(float(low["cosine"]), 4)}}

    def plot(self) -> "go.Figure":
        """Heatmaps of the cosine, one panel per head kind (layer x head) and one for the MLP."""
        from memlens.viz.gradients import plot_component_panels

        return plot_component_panels(self.grid, f"Cosine similarity of parameter gradients: {self.labels[0]} "
                                                f"({self.n_paragraphs[0]}) vs {self.labels[1]} ({self.n_paragraphs[1]})",
                                     zmin=-1.0, zmax=1.0, colorscale="RdBu")


class GradientSimilarity(Analysis):
    """Per-component cosine similarity of two sets' parameter gradients.

    Example::

        sim = GradientSimilarity(model).compute(memorized, non_memorized)
        sim.plot(); sim.by_layer()
    """

    DEFAULT_BATCH_SIZE = 8

    def __init__(self, model: "HookedModel", *, batch_size: int | None = None, progress: bool = True,
                 precision: str | None = None) -> None:
        """
        Args:
            model: the model.
            batch_size: paragraphs per backward pass (default :attr:`DEFAULT_BATCH_SIZE`).
            progress: show progress bars (a call's own ``progress`` wins).
        """
        super().__init__(model, batch_size=batch_size, progress=progress, precision=precision)

    def run(self, a: ParagraphSet, b: ParagraphSet, labels: tuple[str, str] = ("memorized", "non_memorized"),
                progress: bool | None = None) -> GradientSimilarityResult:
        """The gradient of the mean continuation NLL of ``a`` and of ``b`` (one backward pass
        each, as the code's ``single_seq_metric`` over the continuation), then per component the
        cosine between the two gradients restricted to its weights.

        Args:
            a, b: the two sets (e.g. memorized and non-memorized paragraphs).
            labels: their names in tables and figures.
            progress: show a progress bar (default: the constructor's).
        """
        if len(a) == 0 or len(b) == 0:
            raise InputError(f"both sets need paragraphs (got {len(a)} and {len(b)})")
        a.check_compatible(b, "the two sets")
        show = self._progress(progress)
        gm = GradientMap(self.model, batch_size=self.batch_size, progress=show)
        maps = [gm.run(s, objective="nll", signed_weight_grads=True, label=lab) for s, lab in ((a, labels[0]), (b, labels[1]))]
        return self.from_maps(*maps)

    def from_maps(self, a: GradientMapResult, b: GradientMapResult) -> GradientSimilarityResult:
        """The same from two NLL maps already computed with ``signed_weight_grads=True`` (the
        gradient stage's maps: no backward pass again)."""
        for m in (a, b):
            if m.weight_grads is None or not m.weight_grads_signed or m.objective != "nll":
                raise InputError("from_maps needs NLL maps computed with signed_weight_grads=True")
        ga, gb = a.weight_grads, b.weight_grads
        keys, cos = [], []
        for comp in self.model.components:
            va = torch.cat([sl.of(ga[sl.param_name]).flatten() for sl in comp.slices])
            vb = torch.cat([sl.of(gb[sl.param_name]).flatten() for sl in comp.slices])
            denom = va.norm() * vb.norm()
            keys.append(comp.key)
            cos.append(float(va @ vb / denom) if denom > 0 else float("nan"))
        return GradientSimilarityResult(
            keys=keys, cosine=torch.tensor(cos), n_layers=self.model.n_layers, n_heads=self.model.n_heads,
            labels=(a.label or "a", b.label or "b"), n_paragraphs=(len(a.paragraph_ids), len(b.paragraph_ids)),
            provenance=Provenance.capture(self.model, objective="nll", batch_size=self.batch_size))

    #: the verb of earlier versions (:meth:`run`)
    compute = run
