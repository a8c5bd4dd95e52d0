"""Plotly figures of a scan: the distribution of exact match over paragraphs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jaxtyping import Int
from torch import Tensor

if TYPE_CHECKING:
    import plotly.graph_objects as go


def plot_em_histogram(em: Int[Tensor, " n"], continuation_len: int, model_name: str) -> "go.Figure":
    """Histogram of EM (one bin per token count, 0 .. ``continuation_len``)."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Histogram(x=em.tolist(), xbins=dict(start=-0.5, end=continuation_len + 0.5, size=1)))
    fig.update_layout(title=f"Exact match of greedy continuations ({model_name})",
                      xaxis_title="EM (tokens)", yaxis_title="paragraphs", bargap=0.05)
    return fig
