"""Figures (plotly) and views (circuitsvis, rendered offline) drawn from plain data.

Every result's ``.plot()`` hands its data to one of the functions here (so a figure can be
redrawn from a loaded result or from plain tensors), beside the circuitsvis views of heads and
tokens. This layer sits below the analyses: it draws, it does
not compute. The views that run a model (``head_views``, ``activation_gradient_view``) live in
:mod:`memlens.analyses.attention_views` and the report in :mod:`memlens.run.report`; both are
exported from ``memlens``.
"""

from __future__ import annotations

from memlens.viz.circuits import (CircuitsView, ViewList, attention_heads_view, bundle_script, colored_tokens_view,
                                  reset_notebook_bundle, standalone_page)
from memlens.viz.gradients import plot_em_range_profiles, plot_gradient_map, plot_layer_profiles
from memlens.viz.heads import plot_head_grid, plot_head_panels, plot_rank_curve
from memlens.viz.masks import plot_mask_layers
from memlens.viz.perturbation import (drop_tokens_html, plot_em_drop_by_position, plot_em_drop_distribution,
                                      plot_paragraph_drops)
from memlens.viz.scan import plot_em_histogram
from memlens.viz.tokens import plot_token_bars
from memlens.viz.unlearning import plot_finetune, plot_mask_comparison, plot_tradeoff

__all__ = [
    "CircuitsView",
    "ViewList",
    "attention_heads_view",
    "bundle_script",
    "colored_tokens_view",
    "drop_tokens_html",
    "plot_em_drop_by_position",
    "plot_em_drop_distribution",
    "plot_em_histogram",
    "plot_em_range_profiles",
    "plot_finetune",
    "plot_gradient_map",
    "plot_head_grid",
    "plot_head_panels",
    "reset_notebook_bundle",
    "plot_layer_profiles",
    "plot_mask_comparison",
    "plot_mask_layers",
    "plot_paragraph_drops",
    "plot_rank_curve",
    "plot_token_bars",
    "plot_tradeoff",
    "standalone_page",
]
