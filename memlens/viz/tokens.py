"""A bar per token: a per-token quantity with the tokens as labels."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    import plotly.graph_objects as go


def plot_token_bars(tokens: Sequence[str], values: Float[Tensor, " tokens"], title: str, yaxis_title: str,
                    colors: Sequence[str] | None = None, xaxis_title: str = "token") -> "go.Figure":
    """One bar per token labelled ``position:token`` (NaN bars left empty)."""
    import plotly.graph_objects as go

    bar = go.Bar(x=[f"{i}:{t!r}" for i, t in enumerate(tokens)], y=values.tolist())
    if colors is not None:
        bar.update(marker_color=list(colors))
    fig = go.Figure(bar)
    fig.update_layout(title=title, xaxis_title=xaxis_title, yaxis_title=yaxis_title)
    return fig
