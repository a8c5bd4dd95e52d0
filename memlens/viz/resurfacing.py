"""Figures of the resurfacing audit (:class:`memlens.ResurfacingResult`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import plotly.graph_objects as go

MASK_COLORS = {"all": "#636efa", "topk": "#ef553b", "selective": "#00cc96", "random": "#ab63fa"}


def plot_recovered(headline: Sequence[dict[str, Any]]) -> "go.Figure":
    """The recovered share of each attack (x) by mask (bars, with its 95% interval), one panel per
    objective: 0 = the paragraph stayed unlearned, 1 = it came back to its EM before unlearning."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    objectives = list(dict.fromkeys(r["objective"] for r in headline))
    fig = make_subplots(rows=1, cols=max(1, len(objectives)), subplot_titles=[f"objective: {o}" for o in objectives],
                        shared_yaxes=True)
    for col, objective in enumerate(objectives, start=1):
        rows = [r for r in headline if r["objective"] == objective and r["attack"] != "none"]
        for mask in dict.fromkeys(r["mask"] for r in rows):
            part = [r for r in rows if r["mask"] == mask]
            y = [r["recovered"] for r in part]
            fig.add_trace(go.Bar(
                x=[f"{r['attack']}<br>{r['variant']}" for r in part], y=y, name=mask, legendgroup=mask,
                showlegend=col == 1, marker_color=MASK_COLORS.get(mask),
                error_y=dict(type="data", symmetric=False,
                             array=[(r["recovered_ci_high"] - r["recovered"]) if r["recovered_ci_high"] == r["recovered_ci_high"]
                                    else 0 for r in part],
                             arrayminus=[(r["recovered"] - r["recovered_ci_low"]) if r["recovered_ci_low"] == r["recovered_ci_low"]
                                         else 0 for r in part])), row=1, col=col)
    fig.update_layout(barmode="group", title="Resurfacing: share of the unlearned EM that came back after each attack",
                      yaxis_title="recovered share ((after - unlearned) / (before - unlearned))", height=460)
    return fig
