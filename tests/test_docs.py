"""The documentation: the API reference builds offline (mkdocs + mkdocstrings, strict), every
public name has a docstring, and the README and docs import from ``memlens`` only."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import memlens as ml

ROOT = Path(__file__).resolve().parents[1]


def test_api_reference_builds_offline(tmp_path):
    pytest.importorskip("mkdocstrings")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("HookedModel", "GradientMap", "HeadLocalizer", "PrefixPerturber", "SparseFineTuner", "RunConfig"):
        assert f'id="memlens.{name}"' in api, name


def test_every_public_name_is_documented():
    missing = [n for n in ml.__all__ if not (getattr(ml, n).__doc__ or "").strip()]
    assert not missing, missing


def test_public_analysis_calls_document_args_and_returns():
    calls = [ml.scan, ml.GradientMap.compute, ml.PrefixPerturber.sweep, ml.HeadLocalizer.localize,
             ml.SparseFineTuner.unlearn, ml.SparseFineTuner.edit, ml.exact_patching, ml.attribution_patching,
             ml.load_model, ml.run_pipeline, ml.compare_masks, ml.activation_gradients, ml.rare_token_attention,
             ml.Result.save, ml.Result.load]
    bad = [c.__qualname__ for c in calls if "Args:" not in (c.__doc__ or "") or "Returns:" not in (c.__doc__ or "")]
    assert not bad, bad


def test_docs_and_examples_import_from_memlens_only():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").glob("*.py"))]
    deep = re.compile(r"^\s*(?:from|import) memlens\.(?!viz\b)[\w.]+", re.M)
    offenders = [f"{f.name}: {m.group(0).strip()}" for f in files for m in deep.finditer(f.read_text())]
    assert not offenders, offenders
