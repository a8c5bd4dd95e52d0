"""Plotly figure of where a sparse mask's weights sit."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go


def plot_mask_layers(table: "pd.DataFrame", title: str) -> "go.Figure":
    """Stacked bars: selected weights per layer, one segment per parameter name suffix (the part
    after the layer index), from a table with ``parameter, layer, selected`` columns."""
    import plotly.graph_objects as go

    t = table[table["layer"] >= 0].copy()
    t["kind"] = [n.split(f".{layer}.", 1)[-1] for n, layer in zip(t["parameter"], t["layer"])]
    fig = go.Figure()
    for kind, part in t.groupby("kind", sort=False):
        fig.add_trace(go.Bar(x=part["layer"], y=part["selected"], name=kind))
    fig.update_layout(barmode="stack", title=title, xaxis_title="layer", yaxis_title="selected weights",
                      xaxis={"dtick": 1})
    return fig
