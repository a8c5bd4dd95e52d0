"""The progress bar every long loop of memlens shows.

``tqdm.auto`` picks the notebook widget inside Jupyter, and without ipywidgets that widget
prints a ``TqdmWarning`` ("IProgress not found") at every bar. memlens uses the widget only when
ipywidgets is importable and the plain text bar otherwise, which works in a notebook too.
"""

from __future__ import annotations

import importlib.util
from typing import Any


def choose_tqdm() -> Any:
    """``tqdm.auto.tqdm`` when ipywidgets is installed, else the plain ``tqdm.std.tqdm``."""
    try:
        has_widgets = importlib.util.find_spec("ipywidgets") is not None
    except (ImportError, ValueError):
        has_widgets = False
    if has_widgets:
        from memlens.core.progress import tqdm as auto

        return auto
    from tqdm.std import tqdm as plain

    return plain


tqdm = choose_tqdm()
