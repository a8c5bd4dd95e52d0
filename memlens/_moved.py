"""Modules that moved into the layered subpackages: their old paths (``memlens.gradients``)
still import, and reading a name from one warns with the new path."""

from __future__ import annotations

import importlib
import sys
import types
import warnings
from typing import Any

MOVED: dict[str, str] = {
    **{f"memlens.{m}": f"memlens.core.{m}" for m in (
        "model", "data", "components", "architectures", "metrics", "results", "io", "errors", "objectives",
        "sparse", "stats", "compat")},
    **{f"memlens.{m}": f"memlens.analyses.{m}" for m in (
        "scan", "gradients", "heads", "perturb", "unlearn", "patching", "activation_gradients", "rare_attention",
        "profiles", "mask_comparison", "frequency")},
    "memlens.viz.attention": "memlens.analyses.attention_views",
    **{f"memlens.{m}": f"memlens.scale.{m}" for m in ("stream", "scan_table", "ray_scan")},
    **{f"memlens.{m}": f"memlens.run.{m}" for m in ("cli", "pipeline", "stages", "config")},
    "memlens.viz.report": "memlens.run.report",
}


class MovedModule(types.ModuleType):
    """Stands in ``sys.modules`` for a moved module; forwards every name, with a warning."""

    def __init__(self, old: str, new: str) -> None:
        super().__init__(old, f"Moved to {new}.")
        self._memlens_new = new

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        new = self.__dict__["_memlens_new"]
        warnings.warn(f"{self.__name__} moved to {new}; import {name} from there (or from memlens)",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(new), name)


def install() -> None:
    """Put a :class:`MovedModule` in ``sys.modules`` under every old path. The parent package's
    attribute of the same name (``memlens.scan``, the function) is left alone."""
    for old, new in MOVED.items():
        sys.modules.setdefault(old, MovedModule(old, new))
