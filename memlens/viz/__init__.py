"""Figures (plotly) and views (circuitsvis, rendered offline) of memlens results.

Every result has ``.plot()``; the functions here are the building blocks of those figures, the
circuitsvis views of heads and tokens, and the offline HTML report of a run folder.
"""

from memlens.viz.attention import activation_gradient_view, head_views
from memlens.viz.circuits import (CircuitsView, attention_heads_view, bundle_script, colored_tokens_view,
                                  standalone_page)
from memlens.viz.gradients import plot_gradient_map, plot_layer_profiles
from memlens.viz.report import write_report

__all__ = [
    "CircuitsView",
    "activation_gradient_view",
    "attention_heads_view",
    "bundle_script",
    "colored_tokens_view",
    "head_views",
    "plot_gradient_map",
    "plot_layer_profiles",
    "standalone_page",
    "write_report",
]
