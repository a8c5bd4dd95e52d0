"""Plotly figures of gradient maps: heatmaps per component kind and layer profiles."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from torch import Tensor

# The maps drawn here are memlens.GradientMapResult objects; viz sits below the analyses and does
# not import them (it reads their scores, components and layer profiles).
GradientMapLike = Any


def plot_gradient_map(result: GradientMapLike, title: str | None = None) -> "go.Figure":
    """One heatmap per head kind (layer x head) and one for W_in / W_out (layer x matrix)."""
    zmax = float(result.scores.max()) if len(result.scores) else 1.0
    return plot_component_panels(result.grid, title or f"Gradient map ({result.objective}, {result.aggregation}|grad|, "
                                                       f"{len(result.paragraph_ids)} paragraphs)", zmin=0.0, zmax=zmax)


def plot_component_panels(grid: Callable[[str], "Tensor"], title: str, zmin: float, zmax: float,
                          colorscale: str = "Viridis") -> "go.Figure":
    """Panels W_Q, W_K, W_V, W_O (layer x head, from ``grid(kind)``) and MLP (layer x W_in/W_out)
    on one colour axis from ``zmin`` to ``zmax``."""
    import torch
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    kinds = ["W_Q", "W_K", "W_V", "W_O"]
    fig = make_subplots(rows=1, cols=5, subplot_titles=kinds + ["MLP"], horizontal_spacing=0.03,
                        column_widths=[1, 1, 1, 1, 0.4])
    for i, kind in enumerate(kinds):
        fig.add_trace(go.Heatmap(z=grid(kind).tolist(), zmin=zmin, zmax=zmax, coloraxis="coloraxis",
                                 hovertemplate=f"{kind} L%{{y}} H%{{x}}: %{{z:.3g}}<extra></extra>"), 1, i + 1)
    mlp = torch.cat([grid("W_in"), grid("W_out")], dim=1)
    fig.add_trace(go.Heatmap(z=mlp.tolist(), x=["W_in", "W_out"], zmin=zmin, zmax=zmax, coloraxis="coloraxis",
                             hovertemplate="%{x} L%{y}: %{z:.3g}<extra></extra>"), 1, 5)
    fig.update_yaxes(dtick=1)
    fig.update_xaxes(dtick=1)
    fig.update_yaxes(title_text="layer", col=1)
    fig.update_xaxes(title_text="head", col=1)
    fig.update_layout(title=title, coloraxis={"colorscale": colorscale, "cmin": zmin, "cmax": zmax}, height=360)
    return fig


def plot_layer_profiles(results: Sequence[GradientMapLike], labels: Sequence[str] | None = None) -> "go.Figure":
    """Total score per layer for each map (the paper's Fig. 9 layer profiles)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, r in enumerate(results):
        name = (labels[i] if labels else None) or r.label or f"map {i} ({len(r.paragraph_ids)} paragraphs)"
        fig.add_trace(go.Scatter(x=list(range(r.n_layers)), y=r.layer_totals().tolist(), mode="lines+markers", name=name))
    fig.update_layout(title="Gradient per layer", xaxis_title="layer", yaxis_title="sum of component scores",
                      xaxis={"dtick": 1})
    return fig


def plot_em_range_profiles(rows: Sequence[dict[str, Any]]) -> "go.Figure":
    """Share of the gradient per layer, one line per EM range (rows with ``em_range``, ``n`` and
    ``layer_<i>`` keys, as in :class:`memlens.EMRangeProfiles`)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for r in rows:
        layers = sorted(int(k.split("_")[1]) for k in r if k.startswith("layer_"))
        fig.add_trace(go.Scatter(x=layers, y=[r[f"layer_{i}"] for i in layers], mode="lines+markers",
                                 name=f"EM {r['em_range']} (n={r['n']})"))
    fig.update_layout(title="Share of the gradient per layer, by EM range", xaxis_title="layer",
                      yaxis_title="share of total |gradient|", xaxis={"dtick": 1})
    return fig


def plot_em_range_components(rows: Sequence[dict[str, Any]]) -> "go.Figure":
    """The official code's Fig. 9 bars, one group per EM range: the attention and MLP |gradient|
    sums per layer (top), the per-kind |gradient| sum and the variance of the signed gradient
    (bottom), on log axes; from :class:`memlens.EMRangeProfiles` rows with component statistics."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=2, subplot_titles=("attention |gradient| per layer", "MLP |gradient| per layer",
                                                        "|gradient| sum per kind", "gradient variance per kind"))
    kinds = ["W_Q", "W_K", "W_V", "W_O", "W_in", "W_out"]
    for r in rows:
        name = f"EM {r['em_range']} (n={r['n']})"
        layers = sorted(int(k.split("_")[1]) for k in r if k.startswith("attn_"))
        for col, prefix in ((1, "attn"), (2, "mlp")):
            fig.add_trace(go.Bar(x=layers, y=[r[f"{prefix}_{i}"] for i in layers], name=name, legendgroup=name,
                                 showlegend=col == 1), row=1, col=col)
        present = [k for k in kinds if f"{k}_sum" in r]
        for col, stat in ((1, "sum"), (2, "var")):
            fig.add_trace(go.Bar(x=present, y=[r[f"{k}_{stat}"] for k in present], name=name, legendgroup=name,
                                 showlegend=False), row=2, col=col)
    fig.update_yaxes(type="log")
    fig.update_xaxes(title_text="layer", dtick=1, row=1)
    fig.update_layout(barmode="group", height=640, title="Gradients by EM range: attention vs MLP, and per kind")
    return fig
