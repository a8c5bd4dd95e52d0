"""Plotly figures and HTML of prefix perturbation: EM drop per position, its distribution, and
one paragraph's tokens coloured by the drop their replacement causes."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Sequence

from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go


def plot_em_drop_by_position(curves: Sequence[tuple["pd.DataFrame", str]]) -> "go.Figure":
    """One line per ``(per_position table, label)``: mean EM drop against prefix position."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for pp, label in curves:
        fig.add_trace(go.Scatter(x=pp["position"], y=pp["em_drop"], mode="lines+markers", name=label))
    fig.update_layout(title="EM drop when one prefix token is replaced", xaxis_title="prefix position",
                      yaxis_title="mean EM drop (tokens)")
    return fig


def plot_em_drop_distribution(drops: Sequence[tuple[Sequence[float | int], str]]) -> "go.Figure":
    """Overlaid histograms (share of perturbations) of the EM drop per perturbation, one per set."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for values, label in drops:
        fig.add_trace(go.Histogram(x=list(values), name=label, opacity=0.6, histnorm="probability"))
    fig.update_layout(barmode="overlay", title="Distribution of EM drop per perturbation",
                      xaxis_title="EM drop (tokens)", yaxis_title="share of perturbations")
    return fig


def plot_paragraph_drops(drops: Float[Tensor, " prefix"], tokens: Sequence[str], title: str) -> "go.Figure":
    """Bars: the EM drop caused by replacing each prefix token, labelled ``position:token``."""
    from memlens.viz.tokens import plot_token_bars

    return plot_token_bars(tokens, drops, title, "mean EM drop", xaxis_title="prefix token")


def drop_tokens_html(tokens: Sequence[str], drops: Float[Tensor, " prefix"], full_drop: float, continuation: str) -> str:
    """HTML: prefix tokens on a white-to-red background by EM drop (red = ``full_drop``), with
    the drop in each token's tooltip, then the continuation in grey."""
    spans = []
    for tok, d in zip(tokens, drops.tolist()):
        a = 0.0 if d != d else max(0.0, min(1.0, d / full_drop))
        title = "not perturbed" if d != d else f"EM drop {d:.1f}"
        spans.append(f'<span title="{title}" style="background:rgba(220,40,40,{a:.2f});white-space:pre-wrap">'
                     f"{html.escape(tok)}</span>")
    return ('<div style="font-family:monospace;line-height:1.6">' + "".join(spans)
            + f'<span style="color:#888;white-space:pre-wrap">{html.escape(continuation)}</span></div>')
