"""Figures of localization: neuron-score heatmaps, recall against ratio, the DEL scatter, and the
learned masks' loss curves."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

if TYPE_CHECKING:
    import plotly.graph_objects as go


def plot_neuron_scores(scores: Tensor, title: str) -> "go.Figure":
    """Layer x neuron heatmap, each layer scaled to [0, 1] (higher = more implicated)."""
    import plotly.graph_objects as go

    s = torch.nan_to_num(scores.float(), nan=0.0)
    lo, hi = s.min(1, keepdim=True).values, s.max(1, keepdim=True).values
    z = ((s - lo) / (hi - lo).clamp_min(1e-12)).tolist()
    fig = go.Figure(go.Heatmap(z=z, colorscale="Viridis", colorbar={"title": "scaled"}))
    fig.update_layout(title=title, xaxis_title="neuron", yaxis_title="layer", height=160 + 40 * len(z))
    return fig


def plot_recall_by_ratio(rows: Sequence[dict[str, Any]], title: str) -> "go.Figure":
    """Recall (y) against the planted ratio (x, log), one line per localizer, with the rows'
    ``recall_ci_low`` / ``recall_ci_high`` as error bars."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name in dict.fromkeys(r["localizer"] for r in rows):
        pts = sorted((r for r in rows if r["localizer"] == name), key=lambda r: r["ratio"])
        fig.add_trace(go.Scatter(
            x=[r["ratio"] for r in pts], y=[r["recall"] for r in pts], mode="lines+markers", name=name,
            error_y={"type": "data", "symmetric": False, "array": [r["recall_ci_high"] - r["recall"] for r in pts],
                     "arrayminus": [r["recall"] - r["recall_ci_low"] for r in pts]}))
    fig.update_layout(title=title, xaxis={"title": "planted neurons per layer (ratio)", "type": "log"},
                      yaxis={"title": "recall of the planted neurons", "range": [0, 1.02]})
    return fig


def plot_del_scatter(rows: Sequence[dict[str, Any]], title: str) -> "go.Figure":
    """Target EM drop (y) against the other memorized paragraphs' EM drop (x), one point per
    localizer and ratio; marker size grows with the non-memorized NLL change. Upper left = localizing."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name in dict.fromkeys(r["localizer"] for r in rows):
        pts = [r for r in rows if r["localizer"] == name]
        fig.add_trace(go.Scatter(
            x=[r["del_other_em_drop"] for r in pts], y=[r["del_target_em_drop"] for r in pts], mode="markers+text",
            name=name, text=[f"{r['ratio']:g}" for r in pts], textposition="top center",
            marker={"size": [8 + 6 * min(4.0, max(0.0, r["del_non_memorized_nll_change"])) for r in pts]},
            hovertext=[f"{name} at {r['ratio']:g}: non-memorized NLL +{r['del_non_memorized_nll_change']:.3f}" for r in pts]))
    fig.add_shape(type="line", x0=0, y0=0, x1=50, y1=50, line={"dash": "dot", "color": "grey"})
    fig.update_layout(title=title, xaxis={"title": "EM drop of other memorized paragraphs (collateral)", "range": [-1, 51]},
                      yaxis={"title": "EM drop of the target paragraphs", "range": [-1, 51]})
    return fig


def plot_loss_traces(traces: dict[str, Sequence[float]], title: str) -> "go.Figure":
    """The training loss (y) against the optimizer step (x), one line per labelled trace."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for label, trace in traces.items():
        fig.add_trace(go.Scatter(x=list(range(1, len(trace) + 1)), y=list(trace), mode="lines", name=label))
    fig.update_layout(title=title, xaxis_title="optimizer step", yaxis_title="loss (the mask's objective)")
    return fig
