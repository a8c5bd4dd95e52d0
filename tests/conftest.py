"""Shared fixtures: the tiny organism (built once, cached across runs in .pytest_cache) and
tiny random models of every supported architecture."""

from __future__ import annotations

import os

import pytest
import torch

from memlens import HookedModel
from memlens.testing import random_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ARCHS = ["gpt_neo", "gpt2", "gpt_neox", "llama"]


@pytest.fixture(scope="session")
def organism_cache(request) -> str:
    return str(request.config.cache.mkdir("memlens-organism"))


@pytest.fixture(scope="session")
def organism(organism_cache) -> HookedModel:
    """The tiny organism: planted paragraphs with known duplication counts."""
    return HookedModel.organism(size="tiny", seed=0, cache_dir=organism_cache, progress=False)


@pytest.fixture(scope="session")
def neo() -> HookedModel:
    return random_model("gpt_neo")


@pytest.fixture(scope="session", params=ARCHS)
def any_model(request) -> HookedModel:
    return random_model(request.param, seed=1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shared_data():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not (path / "stoehr2024_gpt-neo-125M_memorized.csv").exists():
        pytest.skip(f"reference data not found at {path} (it lives in the team's shared/ folder)")
    return path


@pytest.fixture(scope="session")
def tiny_run(organism, organism_cache, tmp_path_factory):
    """A complete ``memlens run`` on the tiny organism (every stage and the report), done once."""
    from memlens.pipeline import run_pipeline

    out = tmp_path_factory.mktemp("tiny-run") / "run"
    run_pipeline("organism-tiny", out, cache_dir=organism_cache, progress=False)
    return out
