"""The paper's Fig. 9: NLL gradient maps per EM range, reduced to their totals and layer profiles,
and (as the official code's ``mem range grads`` notebook) per component kind the sum, variance,
maximum and minimum of the weight gradients, and per layer the attention and MLP gradient sums."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

from memlens.analyses.gradients import GradientMap, GradientMapResult
from memlens.core.components import HEAD_KINDS, KINDS
from memlens.core.results import Provenance, Result
from memlens.core.precision import with_precision

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from memlens.core.model import HookedModel

DEFAULT_EM_BINS = ((0, 10), (11, 29), (30, 49), (50, 50))


@dataclass(frozen=True, kw_only=True)
class EMRangeProfiles(Result):
    """The paper's Fig. 9: one NLL gradient map per EM range, reduced to its total and layer profile.

    Attributes:
        rows: one dict per EM range with paragraphs: ``em_range, n, mean_nll, total`` (sum of
            the component scores), ``score_var`` (their variance), ``layer_<i>`` (share of the
            total in layer i) and, with component statistics, ``<kind>_sum`` (sum of |gradient|
            over every weight of the kind), ``<kind>_var`` (variance of the signed gradient),
            ``<kind>_max``, ``<kind>_min`` (the code's |min|) for W_Q ... W_out, and
            ``attn_<i>`` / ``mlp_<i>`` (sum of |gradient| of layer i's attention / MLP weights).
    """

    rows: list[dict[str, Any]]
    provenance: Provenance = field(default_factory=Provenance)

    def to_dataframe(self) -> "pd.DataFrame":
        import pandas as pd

        return pd.DataFrame(self.rows)

    def summary(self) -> dict[str, Any]:
        return {"by_em_range": self.rows}

    def plot(self) -> "go.Figure":
        """Layer share of the gradient, one line per EM range."""
        from memlens.viz.gradients import plot_em_range_profiles

        return plot_em_range_profiles(self.rows)

    def plot_components(self) -> "go.Figure":
        """The code's Fig. 9 bars: per EM range, the attention and MLP gradient sums per layer and
        the per-kind sum and variance (log axes)."""
        from memlens.viz.gradients import plot_em_range_components

        return plot_em_range_components(self.rows)


@with_precision
def profiles_by_em_range(
    model: "HookedModel", scan_result: Any, bins: Sequence[tuple[int, int]] = DEFAULT_EM_BINS,
    max_per_bin: int = 32, progress: bool = True, maps: Sequence[GradientMapResult] = (),
    aggregation: str = "max", batch_size: int | None = None, component_stats: bool = True,
) -> EMRangeProfiles:
    """The paper's Fig. 9: for paragraphs grouped by EM range, the total gradient (sum of
    component scores of one NLL map per group) and the share of it in each layer.

    Args:
        model: the model.
        scan_result: a :class:`~memlens.ScanResult` giving each paragraph's EM.
        bins: inclusive EM ranges.
        max_per_bin: at most this many paragraphs per range (the first ones).
        progress: show progress bars.
        maps: NLL maps already computed (e.g. of the memorized and non-memorized sets); one whose
            paragraphs are exactly a range's (and whose aggregation is ``aggregation``; with
            ``component_stats``, one that kept signed weight gradients) is used instead of
            computing that range again.
        aggregation: component score of the maps (``max``, the paper's; see GradientMap.compute).
        batch_size: paragraphs per backward pass (default: GradientMap's).
        component_stats: also the per-kind and per-layer attention / MLP statistics (needs the
            signed gradient of every weight of each range, discarded after use).

    Returns:
        :class:`EMRangeProfiles`, one row per range that has paragraphs.
    """
    rows = []
    for lo, hi in bins:
        sel = (scan_result.em >= lo) & (scan_result.em <= hi)
        group = scan_result.paragraphs[sel][:max_per_bin]
        if len(group) == 0:
            continue
        known = [m for m in maps if m.paragraph_ids == list(group.ids) and m.objective == "nll"
                 and m.aggregation == aggregation and (not component_stats or m.weight_grads_signed)]
        r = known[0] if known else GradientMap(model, batch_size=batch_size).compute(
            group, aggregation=aggregation, keep_weight_grads=False, signed_weight_grads=component_stats,
            progress=progress)
        prof = r.layer_profile().tolist()
        row = {"em_range": f"{lo}-{hi}", "n": len(group), "mean_nll": r.loss, "total": r.total,
               "score_var": float(r.scores.var()) if len(r.scores) > 1 else 0.0,
               **{f"layer_{i}": round(p, 4) for i, p in enumerate(prof)}}
        if component_stats and r.weight_grads is not None:
            row |= component_statistics(model, r.weight_grads)
        rows.append(row)
    return EMRangeProfiles(rows=rows, provenance=Provenance.capture(model, bins=[list(b) for b in bins],
                                                                    max_per_bin=max_per_bin, aggregation=aggregation,
                                                                    component_stats=component_stats))


def component_statistics(model: "HookedModel", grads: dict[str, Tensor]) -> dict[str, float]:
    """From the signed gradient of every weight (by parameter name): per component kind, the sum
    of |g|, the variance of g (unbiased), max g and |min g| over all its weights (the code's
    ``gather_param_stats``); per layer, the sum of |g| over its attention and over its MLP weights.
    Weights shared by several components (grouped-query W_K / W_V) count once."""
    by_kind: dict[str, list[Tensor]] = {k: [] for k in KINDS}
    attn = [0.0] * model.n_layers
    mlp = [0.0] * model.n_layers
    seen: set[tuple[int, int, int, int]] = set()
    for comp in model.components:
        for sl in comp.slices:
            if sl.identity in seen:
                continue
            seen.add(sl.identity)
            g = sl.of(grads[sl.param_name]).flatten().float()
            by_kind[comp.key.kind].append(g)
            total = float(g.abs().sum())
            if comp.key.kind in HEAD_KINDS:
                attn[comp.key.layer] += total
            else:
                mlp[comp.key.layer] += total
    out: dict[str, float] = {}
    for kind, parts in by_kind.items():
        if not parts:
            continue
        g = torch.cat(parts)
        out |= {f"{kind}_sum": float(g.abs().sum()), f"{kind}_var": float(g.var()) if g.numel() > 1 else 0.0,
                f"{kind}_max": float(g.max()), f"{kind}_min": float(g.min().abs())}
    out |= {f"attn_{i}": v for i, v in enumerate(attn)} | {f"mlp_{i}": v for i, v in enumerate(mlp)}
    return out
