"""Plotly figures of a scan: the distribution of exact match over paragraphs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jaxtyping import Int
from torch import Tensor

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go


def plot_em_histogram(em: Int[Tensor, " n"], continuation_len: int, model_name: str) -> "go.Figure":
    """Histogram of EM (one bin per token count, 0 .. ``continuation_len``)."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Histogram(x=em.tolist(), xbins=dict(start=-0.5, end=continuation_len + 0.5, size=1)))
    fig.update_layout(title=f"Exact match of greedy continuations ({model_name})",
                      xaxis_title="EM (tokens)", yaxis_title="paragraphs", bargap=0.05)
    return fig


def plot_duplication(table: "pd.DataFrame", count_column: str) -> "go.Figure":
    """Four panels from a table with ``count, em, nll, split`` columns: EM and NLL against the
    count (log x axis; paragraphs with count 0 cannot sit on it and appear only in the
    histograms), and the histograms of EM and NLL per split (the paper's Fig. 2 and Fig. 8)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    positive = table[table["count"] > 0]
    fig = make_subplots(rows=2, cols=2, subplot_titles=(f"EM vs {count_column}", f"NLL vs {count_column}",
                                                        "EM by split", "NLL by split"))
    for col, key in ((1, "em"), (2, "nll")):
        fig.add_trace(go.Scatter(x=positive["count"], y=positive[key], mode="markers", showlegend=False,
                                 marker={"size": 5, "opacity": 0.6}, text=positive["paragraph"],
                                 hovertemplate=f"%{{text}}: {count_column} %{{x}}, {key} %{{y:.3g}}<extra></extra>"),
                      row=1, col=col)
        fig.update_xaxes(type="log", title_text=f"{count_column} (log)", row=1, col=col)
    for split, part in table.groupby("split", sort=False):
        for col, key in ((1, "em"), (2, "nll")):
            fig.add_trace(go.Histogram(x=part[key], name=str(split), legendgroup=str(split), showlegend=col == 1,
                                       opacity=0.6), row=2, col=col)
    fig.update_yaxes(title_text="EM (tokens)", row=1, col=1)
    fig.update_yaxes(title_text="NLL (nats/token)", row=1, col=2)
    fig.update_xaxes(title_text="EM (tokens)", row=2, col=1)
    fig.update_xaxes(title_text="NLL (nats/token)", row=2, col=2)
    fig.update_layout(barmode="overlay", height=640, title="Memorization against duplication")
    return fig
