"""Shared fixtures: the tiny organism (built once, cached across runs in .pytest_cache) and
tiny random models of every supported architecture.

Tiers: tests that need the organism (or a run of it) or that train or build a model are marked
``slow`` automatically; ``pytest`` runs the fast tier, ``pytest -m "slow or not slow"`` (what
``scripts/test.sh`` runs) runs both. After every test, every model a test could reach must be as
it was: no hook left registered, no ``requires_grad`` flag changed, no ``.grad`` left behind, the
same compute precision.
"""

from __future__ import annotations

import os
import weakref

import pytest
import torch

from memlens import HookedModel
from memlens.testing import random_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ARCHS = ["gpt_neo", "gpt2", "gpt_neox", "llama"]
SLOW_FIXTURES = {"organism", "restored", "tiny_run", "organism_cache"}

_LIVE_MODELS: "weakref.WeakSet[HookedModel]" = weakref.WeakSet()
_original_init = HookedModel.__init__


def _tracked_init(self, *args, **kwargs):
    _original_init(self, *args, **kwargs)
    _LIVE_MODELS.add(self)


HookedModel.__init__ = _tracked_init  # every model built during the session is checked for leaks


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or "tests/organism/" in item.nodeid:
            item.add_marker(pytest.mark.slow)


def _state(model: HookedModel) -> tuple[int, frozenset[str], list[str], str]:
    hooks = 0
    for hp in set(model.tl_model.hook_dict.values()):  # the hook points (the bridge's own module hooks aside)
        hooks += len(hp._forward_hooks) + len(hp._forward_pre_hooks) + len(hp._backward_hooks)
        hooks += len(getattr(hp, "_backward_pre_hooks", {}))
    params = dict(model.tl_model.named_parameters())
    trainable = frozenset(n for n, p in params.items() if p.requires_grad)
    grads = [n for n, p in params.items() if p.grad is not None]
    return hooks, trainable, grads, model.precision


@pytest.fixture(autouse=True)
def _no_leaks(request):
    before = {id(m): (m, _state(m)) for m in list(_LIVE_MODELS)}
    yield
    for model, (hooks, trainable, _, precision) in before.values():
        now_hooks, now_trainable, grads, now_precision = _state(model)
        assert now_precision == precision, f"{request.node.nodeid} left {model.name} at precision {now_precision}"
        assert now_hooks == hooks, f"{request.node.nodeid} left {now_hooks - hooks} hook(s) on {model.name}"
        assert now_trainable == trainable, (
            f"{request.node.nodeid} changed requires_grad of {sorted(now_trainable ^ trainable)[:3]} on {model.name}")
        assert not grads, f"{request.node.nodeid} left .grad on {grads[:3]} of {model.name}"


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
    from memlens.run.pipeline import run_pipeline

    out = tmp_path_factory.mktemp("tiny-run") / "run"
    run_pipeline("organism-tiny", out, cache_dir=organism_cache, progress=False)
    return out
