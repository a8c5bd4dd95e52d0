"""The notebook tutorial (docs/tutorial.ipynb) runs top to bottom on the tiny organism, with its
circuitsvis views inline."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "tutorial.ipynb"


def test_tutorial_notebook_runs(organism, organism_cache, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("MEMLENS_SIZE", "tiny")
    monkeypatch.setenv("MEMLENS_CACHE", organism_cache)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    views = [h for h in html if 'class="memlens-cv"' in h]
    assert views and all('data-memlens="circuitsvis"' in h for h in views)  # the bundle travels with the view
    assert sum("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs) >= 5
