"""Plotly figure of the noise intervention: EM and NLL against the noise scale, per mask."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

_COLORS = {"memorized": "#d62728", "non_memorized": "#1f77b4"}


def plot_noise(means: "pd.DataFrame", masks: Sequence[str], relative_to: str) -> "go.Figure":
    """One panel per mask: mean EM (markers, left axis; error bars = min/max over draws) and mean
    NLL (dashed, right axis) of each set against the scale, from a table with ``mask, scale, set,
    em, em_min, em_max, nll`` columns."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(masks), subplot_titles=list(masks),
                        specs=[[{"secondary_y": True}] * len(masks)])
    for c, mask in enumerate(masks, start=1):
        part = means[means["mask"] == mask]
        for s, rows in part.groupby("set", sort=False):
            color = _COLORS.get(str(s), None)
            fig.add_trace(go.Scatter(
                x=rows["scale"], y=rows["em"], mode="markers", name=f"{s} EM", legendgroup=str(s), showlegend=c == 1,
                marker={"color": color, "symbol": "triangle-up"},
                error_y={"type": "data", "symmetric": False, "array": (rows["em_max"] - rows["em"]).tolist(),
                         "arrayminus": (rows["em"] - rows["em_min"]).tolist()}), row=1, col=c, secondary_y=False)
            fig.add_trace(go.Scatter(x=rows["scale"], y=rows["nll"], mode="lines", name=f"{s} NLL", legendgroup=str(s),
                                     showlegend=c == 1, line={"color": color, "dash": "dash"}),
                          row=1, col=c, secondary_y=True)
    fig.update_xaxes(title_text="noise std" + (" (x each parameter's std)" if relative_to == "parameter_std" else ""))
    fig.update_yaxes(title_text="EM (tokens)", secondary_y=False, col=1)
    fig.update_yaxes(title_text="NLL (nats/token)", secondary_y=True, col=len(masks))
    fig.update_layout(title="Noise on a mask's weights: memorized vs non-memorized paragraphs", height=380)
    return fig
