"""Plotly figures of per-head quantities: one layer x head heatmap, or a panel per evidence kind."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    import plotly.graph_objects as go


def plot_head_grid(z: Float[Tensor, "layer head"], title: str, text: Sequence[Sequence[str]] | None = None,
                   colorscale: str = "Viridis", zmid: float | None = None, unit: str = "") -> "go.Figure":
    """A layer x head heatmap of ``z`` (NaN cells left blank), ``text`` written in the cells,
    ``unit`` after the value in the hover label."""
    import plotly.graph_objects as go

    heat = go.Heatmap(z=z.float().tolist(), colorscale=colorscale, zmid=zmid,
                      hovertemplate=f"L%{{y}} H%{{x}}: %{{z:.3g}}{unit}<extra></extra>")
    if text is not None:
        heat.update(text=[list(row) for row in text], texttemplate="%{text}")
    fig = go.Figure(heat)
    fig.update_layout(title=title, xaxis_title="head", yaxis_title="layer", xaxis={"dtick": 1}, yaxis={"dtick": 1})
    return fig


def plot_head_panels(panels: Mapping[str, Float[Tensor, "layer head"]], title: str, cols: int = 3) -> "go.Figure":
    """One heatmap per entry of ``panels``, each min-max scaled to [0, 1] (hover shows the raw
    value), on one shared colour axis."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(panels)
    cols = max(1, min(cols, len(names)))
    rows = (len(names) + cols - 1) // cols
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=names)
    for i, name in enumerate(names):
        z = torch.nan_to_num(panels[name].float())
        zn = (z - z.min()) / (z.max() - z.min()) if z.max() > z.min() else torch.zeros_like(z)
        fig.add_trace(go.Heatmap(z=zn.tolist(), customdata=z.tolist(), coloraxis="coloraxis",
                                 hovertemplate=f"{name} L%{{y}} H%{{x}}: %{{customdata:.3g}}<extra></extra>"),
                      row=i // cols + 1, col=i % cols + 1)
    fig.update_layout(title=title, coloraxis={"colorscale": "Viridis"}, height=260 * rows)
    fig.update_xaxes(dtick=1)
    fig.update_yaxes(dtick=1)
    return fig


def plot_rank_curve(values: Float[Tensor, " ranks"], title: str, xaxis_title: str, yaxis_title: str) -> "go.Figure":
    """A line of one head's value per rank (the paper's Fig. 7: attention by token rarity rank)."""
    import plotly.graph_objects as go

    y = values.tolist()
    fig = go.Figure(go.Scatter(x=list(range(len(y))), y=y, mode="lines+markers"))
    fig.update_layout(title=title, xaxis_title=xaxis_title, yaxis_title=yaxis_title)
    return fig
