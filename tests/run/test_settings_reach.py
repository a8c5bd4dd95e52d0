"""Every setting has one default (memlens.core.defaults) and reaches the computation it names."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch

import memlens as ml
from memlens.core import defaults
from memlens.core.results import Provenance
from memlens.run.context import RunContext


def _default(fn, name):
    return inspect.signature(fn).parameters[name].default


def test_each_setting_has_one_default():
    assert ml.UnlearnConfig().fraction == defaults.FRACTION == _default(ml.SparseFineTuner.unlearn, "fraction") \
        == _default(ml.SparseFineTuner.edit, "fraction") == _default(ml.compare_masks, "fraction")
    from memlens.analyses.scan import split_thresholds

    # scan's None resolves (split_thresholds) to the one default, or below a lower memorized_min_em
    assert _default(ml.scan, "non_memorized_max_em") is None
    assert ml.ScanConfig().non_memorized_max_em == defaults.NON_MEMORIZED_MAX_EM == split_thresholds(50)[0]
    assert split_thresholds(50, None, 5) == (4, 5)
    assert ml.PerturbConfig().n_samples == defaults.N_SAMPLES == _default(ml.PrefixPerturber.sweep, "n_samples")
    assert ml.HeadsConfig().exact_top == 0 == _default(ml.HeadLocalizer.localize, "exact_top")  # 0: off, everywhere
    assert set(ml.UnlearnConfig().masks) == set(defaults.MASK_KINDS)
    assert ml.HeadsConfig().patch_kinds == defaults.PATCH_KINDS


def test_the_command_line_help_shows_the_configs_defaults():
    from memlens.run.cli import build_parser

    text = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    assert f"(default: {defaults.FRACTION})" in text and f"(default: {defaults.N_SAMPLES})" in text


def test_every_analysis_class_takes_the_same_protocol(neo):
    for cls in (ml.GradientMap, ml.HeadLocalizer, ml.PrefixPerturber, ml.SparseFineTuner):
        params = inspect.signature(cls.__init__).parameters
        assert params["batch_size"].kind is inspect.Parameter.KEYWORD_ONLY and params["batch_size"].default is None
        assert params["progress"].kind is inspect.Parameter.KEYWORD_ONLY and params["progress"].default is True
        assert cls(neo, batch_size=3).batch_size == 3


@pytest.fixture
def fake_run(neo, tmp_path):
    """A run context on the tiny random model whose 'scan' says: first half memorized."""
    gen = torch.Generator().manual_seed(1)
    paras = ml.ParagraphSet.from_tokens(torch.randint(0, 500, (8, 40), generator=gen).tolist(), 20, 20)
    em = torch.tensor([20] * 4 + [0] * 4)
    scan = ml.ScanResult(paragraphs=paras, em=em, nll=torch.ones(8), provenance=Provenance())

    def make(**settings):
        cfg = ml.RunConfig(model="random").override(settings)
        return RunContext(tmp_path / "run", cfg, progress=False, _model=neo, _paragraphs=paras, _scan=scan)

    (tmp_path / "run").mkdir()
    return make


def test_gradient_settings_reach_the_maps_and_the_profiles(fake_run, monkeypatch):
    from memlens.analyses import gradients
    from memlens.run.stages import gradients_stage

    seen = []
    real = gradients.GradientMap.compute

    def spy(self, paragraphs, *args, **kwargs):
        similarity = "aggregation" not in kwargs  # the similarity's maps: signed gradients, no component scores
        seen.append((kwargs.get("aggregation"), kwargs.get("batch_size") or self.batch_size, similarity))
        return real(self, paragraphs, *args, **kwargs)

    monkeypatch.setattr(gradients.GradientMap, "compute", spy)
    ctx = fake_run(**{"gradients.aggregation": "l1", "gradients.batch_size": 3, "gradients.max_per_em_bin": 2})
    gradients_stage(ctx)
    maps = [s for s in seen if not s[2]]
    assert maps and all(s[:2] == ("l1", 3) for s in maps), seen  # the profiles' maps too (they were computed with max)
    assert [s[1:] for s in seen if s[2]] == [(3, True), (3, True)]  # the similarity's two sets, at the batch size
    profiles = ml.EMRangeProfiles.load(ctx.folder.file("gradient_profiles"))
    assert profiles.provenance.config["aggregation"] == "l1"
    assert ml.GradientMapResult.load(ctx.folder.file("gradient_map", "memorized")).aggregation == "l1"


def test_head_settings_reach_patching_and_ablation(fake_run, monkeypatch):
    from memlens.analyses import head_ablation, heads
    from memlens.run.stages import heads_stage

    sizes: dict[str, list[int]] = {"exact": [], "ablation": []}
    real_exact, real_run = heads.exact_patching, head_ablation.HeadAblation.run

    def exact(*args, batch_size=64, **kwargs):
        sizes["exact"].append(batch_size)
        return real_exact(*args, batch_size=batch_size, **kwargs)

    def ablation(self, *args, **kwargs):
        sizes["ablation"].append(self.batch_size)
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(heads, "exact_patching", exact)
    monkeypatch.setattr(head_ablation.HeadAblation, "run", ablation)
    ctx = fake_run(**{"heads.batch_size": 5, "heads.max_paragraphs": 2, "heads.patch_kinds": ["z"]})
    heads_stage(ctx)
    assert sizes["exact"] and set(sizes["exact"]) == {5}
    assert sizes["ablation"] == [5]


def test_every_unlearn_setting_reaches_the_fine_tuner(fake_run, monkeypatch):
    """The code's objective, optimizer, mask draw and trial design travel from the settings through
    compare_masks to each SparseFineTuner run."""
    from memlens.analyses.unlearn import SparseFineTuner
    from memlens.run.stages import unlearn_stage

    calls = []
    real = SparseFineTuner.unlearn

    def spy(self, target, retain, **kwargs):
        calls.append((list(retain.ids), kwargs))
        return real(self, target, retain, **kwargs)

    monkeypatch.setattr(SparseFineTuner, "unlearn", spy)
    ctx = fake_run(**{"unlearn.n_targets": 2, "unlearn.retain_paragraphs": 2, "unlearn.retain_design": "fresh",
                      "unlearn.masks": ["random"], "unlearn.steps": 2, "unlearn.lr": 1e-4, "unlearn.weight_decay": 1.0,
                      "unlearn.nll_scale": 0.1, "unlearn.kl_direction": "original||model",
                      "unlearn.kl_reduction": "batchmean", "unlearn.random_mask": "bernoulli", "unlearn.edit": False})
    summary = unlearn_stage(ctx)
    assert len(calls) == 2 and calls[0][0] != calls[1][0] and all(len(ids) == 2 for ids, _ in calls)
    for _, kw in calls:
        assert (kw["steps"], kw["lr"], kw["weight_decay"], kw["nll_scale"], kw["kl_direction"], kw["kl_reduction"],
                kw["random_mask"]) == (2, 1e-4, 1.0, 0.1, "original||model", "batchmean", "bernoulli")
    assert summary["design"]["retain"] == "fresh" and "0.1 NLL" in summary["design"]["objective"]


def test_old_module_paths_still_import_with_a_warning():
    from memlens.gradients import GradientMap  # noqa: F401  (the module moved to memlens.analyses.gradients)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import memlens.pipeline as old

        assert old.run_pipeline is ml.run_pipeline
    assert any("memlens.pipeline moved to memlens.run.pipeline" in str(w.message) for w in caught)
    assert ml.scan.__module__ == "memlens.analyses.scan"  # the package's `scan` is still the function
    with pytest.warns(DeprecationWarning, match="memlens.viz.head_views moved"):
        assert ml.viz.head_views is ml.head_views
