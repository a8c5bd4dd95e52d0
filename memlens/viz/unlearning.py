"""Plotly figures of sparse fine-tuning: one run (loss per step, EM before and after), Fig. 5's
distributions over trials, and the trade-off curves of forgetting against sparing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import plotly.graph_objects as go

# The results drawn here (FineTuneResult, MaskComparison, MaskTradeoff) live in memlens.analyses;
# viz sits below the analyses and reads their rows, trials and losses.
ResultLike = Any


def plot_finetune(result: ResultLike) -> "go.Figure":
    """Loss per step and mean EM before/after per set."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("objective per step", "mean EM before / after"))
    fig.add_trace(go.Scatter(y=result.losses, mode="lines+markers", name="loss"), 1, 1)
    sets = [s for s in ("target", "other_memorized", "retain") if any(r["set"] == s for r in result.rows)]
    for col, name in (("em_before", "before"), ("em_after", "after")):
        fig.add_trace(go.Bar(x=sets, y=[result.mean(s, col) for s in sets], name=name), 1, 2)
    fig.update_layout(title=f"{result.objective} with mask '{result.mask_kind}' ({result.mask_size} weights)")
    return fig


def plot_mask_comparison(result: ResultLike) -> "go.Figure":
    """Fig. 5 as distributions: box plots (every trial a point) of the EM and NLL after
    fine-tuning per objective/mask, for the targets and the retain batches; bars of the means
    when the trials were not kept (a file written before memlens kept them)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if not result.trials:
        fig = go.Figure()
        for key, label in (("target_em_after", "target"), ("other_memorized_em_after", "other memorized"),
                           ("retain_em_after", "retain")):
            if result.rows and key in result.rows[0]:
                fig.add_trace(go.Bar(x=[f"{r['objective']}/{r['mask']}" for r in result.rows],
                                     y=[r[key] for r in result.rows], name=label))
        fig.update_layout(barmode="group", title="EM after sparse fine-tuning", yaxis_title="mean EM (tokens)")
        return fig
    panels = (("target_em_after", "target EM after (tokens)"), ("retain_em_after", "retain EM after (tokens)"),
              ("target_nll_after", "target NLL after (nats/token)"), ("retain_nll_after", "retain NLL after (nats/token)"))
    fig = make_subplots(rows=2, cols=2, subplot_titles=[p[1] for p in panels])
    palette = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
    for k, r in enumerate(result.rows):
        label = f"{r['objective']}/{r['mask']}"
        for j, (col, _) in enumerate(panels):
            vals = [t[col] for t in result.trials if t["objective"] == r["objective"] and t["mask"] == r["mask"]]
            fig.add_trace(go.Box(y=vals, name=label, boxpoints="all", jitter=0.4, pointpos=0, boxmean=True,
                                 marker_color=palette[k % len(palette)], showlegend=j == 0, legendgroup=label),
                          row=j // 2 + 1, col=j % 2 + 1)
    n = result.rows[0].get("n_trials", "")
    fig.update_layout(title=f"Sparse fine-tuning, {n} trials per mask (box: quartiles; dashed: mean)",
                      height=640)
    return fig


def plot_tradeoff(result: ResultLike) -> "go.Figure":
    """Retain EM after (y) against target EM after (x): every grid point of each mask (seed means,
    faint) and its Pareto frontier (line), with 95% intervals over seeds as error bars; hover shows
    the setting. At equal x, the mask whose frontier lies higher spares the retain set better."""
    import plotly.graph_objects as go

    colors = {"all": "#636efa", "topk": "#ef553b", "selective": "#00cc96", "random": "#ab63fa"}
    fig = go.Figure()
    for mask in result.masks:
        color = colors.get(mask, "#7f7f7f")
        pts = result.points(mask)
        label = [f"lr {p['lr']:g}, {p['steps']} steps, decay {p['decay']}" for p in pts]
        fig.add_trace(go.Scatter(x=[p["target_em_after"] for p in pts], y=[p["retain_em_after"] for p in pts],
                                 mode="markers", name=f"{mask}: grid", marker={"color": color, "opacity": 0.35},
                                 hovertext=label, legendgroup=mask, showlegend=False))
        front = result.frontier(mask)
        x = [p["target_em_after"] for p in front]
        y = [p["retain_em_after"] for p in front]
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="lines+markers", name=mask, legendgroup=mask, line={"color": color},
            hovertext=[f"lr {p['lr']:g}, {p['steps']} steps, decay {p['decay']}" for p in front],
            error_x=dict(type="data", symmetric=False, array=[p["target_em_after_ci_high"] - v for p, v in zip(front, x)],
                         arrayminus=[v - p["target_em_after_ci_low"] for p, v in zip(front, x)]),
            error_y=dict(type="data", symmetric=False, array=[p["retain_em_after_ci_high"] - v for p, v in zip(front, y)],
                         arrayminus=[v - p["retain_em_after_ci_low"] for p, v in zip(front, y)])))
    fig.add_vline(x=25, line={"dash": "dot", "color": "grey"})
    fig.update_layout(title="Forgetting against sparing: each mask's frontier over lr x steps x weight decay",
                      xaxis_title="target EM after (tokens; lower = more forgotten)",
                      yaxis_title="retain EM after (tokens; higher = more spared)")
    return fig
