"""Figures (plotly) and views (circuitsvis, rendered offline) drawn from plain data.

Every result has ``.plot()``; the functions here are the building blocks of those figures and
the circuitsvis views of heads and tokens. This layer sits below the analyses: it draws, it does
not compute. The views that run a model (``head_views``, ``activation_gradient_view``) live in
:mod:`memlens.analyses.attention_views` and the report in :mod:`memlens.run.report`; both are
exported from ``memlens`` (their old names here still work, with a warning).
"""

from __future__ import annotations

import warnings
from typing import Any

from memlens.viz.circuits import (CircuitsView, attention_heads_view, bundle_script, colored_tokens_view,
                                  standalone_page)
from memlens.viz.gradients import plot_gradient_map, plot_layer_profiles

__all__ = [
    "CircuitsView",
    "attention_heads_view",
    "bundle_script",
    "colored_tokens_view",
    "plot_gradient_map",
    "plot_layer_profiles",
    "standalone_page",
]

_MOVED = {"head_views": "memlens.analyses.attention_views", "activation_gradient_view": "memlens.analyses.attention_views",
          "write_report": "memlens.run.report"}


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module 'memlens.viz' has no attribute {name!r}")
    warnings.warn(f"memlens.viz.{name} moved to {_MOVED[name]} (also memlens.{name})", DeprecationWarning, stacklevel=2)
    if name == "write_report":
        from memlens.run.report import write_report

        return write_report
    from memlens.analyses import attention_views

    return getattr(attention_views, name)
