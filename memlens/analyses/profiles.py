"""The paper's Fig. 9: NLL gradient maps per EM range, reduced to their totals and layer profiles."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from memlens.analyses.gradients import GradientMap, GradientMapResult
from memlens.core.results import Provenance, Result

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from memlens.core.model import HookedModel

DEFAULT_EM_BINS = ((0, 10), (11, 29), (30, 49), (50, 50))


@dataclass(frozen=True, kw_only=True)
class EMRangeProfiles(Result):
    """The paper's Fig. 9: one NLL gradient map per EM range, reduced to its total and layer profile.

    Attributes:
        rows: one dict per EM range with paragraphs: ``em_range, n, mean_nll, total`` and
            ``layer_<i>`` (share of the total in layer i).
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

def profiles_by_em_range(
    model: "HookedModel", scan_result: Any, bins: Sequence[tuple[int, int]] = DEFAULT_EM_BINS,
    max_per_bin: int = 32, progress: bool = True, maps: Sequence[GradientMapResult] = (),
    aggregation: str = "max", batch_size: int | None = None,
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
            paragraphs are exactly a range's (and whose aggregation is ``aggregation``) is used
            instead of computing that range again.
        aggregation: component score of the maps (``max``, the paper's; see GradientMap.compute).
        batch_size: paragraphs per backward pass (default: GradientMap's).

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
                 and m.aggregation == aggregation]
        r = known[0] if known else GradientMap(model, batch_size=batch_size).compute(
            group, aggregation=aggregation, keep_weight_grads=False, progress=progress)
        prof = r.layer_profile().tolist()
        rows.append({"em_range": f"{lo}-{hi}", "n": len(group), "mean_nll": r.loss, "total": r.total,
                     **{f"layer_{i}": round(p, 4) for i, p in enumerate(prof)}})
    return EMRangeProfiles(rows=rows, provenance=Provenance.capture(model, bins=[list(b) for b in bins],
                                                                    max_per_bin=max_per_bin, aggregation=aggregation))
