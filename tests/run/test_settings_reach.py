"""Every setting has one default (memlens.core.defaults) and reaches the computation it names."""

from __future__ import annotations

import inspect

import pytest
import torch

import memlens as ml
from memlens.core import defaults
from memlens.core.results import Provenance
from memlens.run.context import RunContext


def _default(fn, name):
    return inspect.signature(fn).parameters[name].default


def test_each_setting_has_one_default():
    ft = ml.FineTuneSettings()
    assert ml.UnlearnConfig().fraction == defaults.FRACTION == ft.fraction
    for name in ("steps", "lr", "kl_weight", "nll_scale", "kl_direction", "kl_reduction", "weight_decay", "random_mask",
                 "selectivity_floor"):
        assert getattr(ml.UnlearnConfig(), name) == getattr(ft, name), name
    assert ft.selectivity_floor == defaults.SELECTIVITY_FLOOR
    # the fine-tuning entry points take the settings object, not copies of its defaults
    for fn in (ml.SparseFineTuner.unlearn, ml.SparseFineTuner.edit, ml.compare_masks):
        assert _default(fn, "settings") is None and "steps" not in inspect.signature(fn).parameters
    # each batch-size default is the analysis class's own
    assert ml.GradientsConfig().batch_size == ml.GradientMap.DEFAULT_BATCH_SIZE
    assert ml.PerturbConfig().batch_size == ml.PrefixPerturber.DEFAULT_BATCH_SIZE
    assert ml.HeadsConfig().batch_size == ml.HeadLocalizer.DEFAULT_BATCH_SIZE
    assert ml.NoiseConfig().batch_size == ml.NoiseIntervention.DEFAULT_BATCH_SIZE
    assert ml.HeadAblationConfig().batch_size == ml.HeadAblation.DEFAULT_BATCH_SIZE
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


ANALYSES = ("GradientMap", "GradientSimilarity", "HeadAblation", "HeadLocalizer", "NoiseIntervention", "PrefixPerturber",
            "SparseFineTuner")


@pytest.mark.parametrize("name", ANALYSES)
def test_every_analysis_class_takes_the_same_protocol(neo, name):
    """One base: the same constructor, a DEFAULT_BATCH_SIZE, and run() as the one verb."""
    cls = getattr(ml, name)
    assert issubclass(cls, ml.Analysis) and "run" in cls.__dict__
    params = inspect.signature(cls.__init__).parameters
    assert params["batch_size"].kind is inspect.Parameter.KEYWORD_ONLY and params["batch_size"].default is None
    assert params["progress"].kind is inspect.Parameter.KEYWORD_ONLY and params["progress"].default is True
    assert cls(neo, batch_size=3).batch_size == 3 and cls(neo).batch_size == cls.DEFAULT_BATCH_SIZE
    with pytest.raises(ml.InputError, match="batch_size"):
        cls(neo, batch_size=0)


def test_the_old_verbs_are_the_new_one():
    assert ml.GradientMap.compute is ml.GradientMap.run and ml.HeadLocalizer.localize is ml.HeadLocalizer.run
    assert ml.PrefixPerturber.sweep is ml.PrefixPerturber.run and ml.GradientSimilarity.compute is ml.GradientSimilarity.run


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
    from memlens.run.stages.gradients import gradients_stage

    seen = []
    real = gradients.GradientMap.run

    def spy(self, paragraphs, *args, **kwargs):
        seen.append((list(paragraphs.ids), kwargs.get("aggregation"), kwargs.get("batch_size") or self.batch_size))
        return real(self, paragraphs, *args, **kwargs)

    monkeypatch.setattr(gradients.GradientMap, "run", spy)
    ctx = fake_run(**{"gradients.aggregation": "l1", "gradients.batch_size": 3, "gradients.max_per_em_bin": 2})
    gradients_stage(ctx)
    assert seen and all(s[1:] == ("l1", 3) for s in seen), seen  # the profiles' maps too (they were computed with max)
    # each set is differentiated once: the similarity reuses the maps' backward passes
    ids = [tuple(s[0]) for s in seen]
    assert len(ids) == len(set(ids)), ids
    assert ml.GradientSimilarityResult.load(ctx.folder.file("gradient_similarity")).n_paragraphs == (4, 4)
    profiles = ml.EMRangeProfiles.load(ctx.folder.file("gradient_profiles"))
    assert profiles.provenance.config["aggregation"] == "l1"
    assert ml.GradientMapResult.load(ctx.folder.file("gradient_map", "memorized")).aggregation == "l1"


def test_head_settings_reach_patching_and_ablation(fake_run, monkeypatch):
    from memlens.analyses import head_ablation, heads
    from memlens.run.stages.head_ablation import head_ablation_stage
    from memlens.run.stages.heads import heads_stage

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
    ctx = fake_run(**{"heads.batch_size": 5, "heads.max_paragraphs": 2, "heads.patch_kinds": ["z"],
                      "head_ablation.batch_size": 6})
    heads_stage(ctx)
    head_ablation_stage(ctx)
    assert sizes["exact"] and set(sizes["exact"]) == {5}
    assert sizes["ablation"] == [6]
    assert ml.HeadAblationResult.load(ctx.folder.file("head_ablation")).paragraph_ids == ctx.scan_result().paragraphs.ids[:2]


def test_every_unlearn_setting_reaches_the_fine_tuner(fake_run, monkeypatch):
    """The code's objective, optimizer, mask draw and trial design travel from the settings through
    compare_masks to each SparseFineTuner run."""
    from memlens.analyses.unlearn import SparseFineTuner
    from memlens.run.stages.unlearn import unlearn_stage

    calls = []
    real = SparseFineTuner.unlearn

    def spy(self, target, retain, mask="topk", *, settings=None, **kwargs):
        calls.append((list(retain.ids), ml.FineTuneSettings.resolve(settings, {k: v for k, v in kwargs.items()
                                                                             if k != "other_memorized"})))
        return real(self, target, retain, mask, settings=settings, **kwargs)

    monkeypatch.setattr(SparseFineTuner, "unlearn", spy)
    ctx = fake_run(**{"unlearn.n_targets": 2, "unlearn.retain_paragraphs": 2, "unlearn.retain_design": "fresh",
                      "unlearn.masks": ["random"], "unlearn.steps": 2, "unlearn.lr": 1e-4, "unlearn.weight_decay": 1.0,
                      "unlearn.nll_scale": 0.1, "unlearn.kl_direction": "original||model",
                      "unlearn.kl_reduction": "batchmean", "unlearn.random_mask": "bernoulli", "unlearn.edit": False})
    summary = unlearn_stage(ctx)
    assert len(calls) == 2 and calls[0][0] != calls[1][0] and all(len(ids) == 2 for ids, _ in calls)
    for _, st in calls:
        assert (st.steps, st.lr, st.weight_decay, st.nll_scale, st.kl_direction, st.kl_reduction,
                st.random_mask) == (2, 1e-4, 1.0, 0.1, "original||model", "batchmean", "bernoulli")
    assert [st.seed for _, st in calls] == [0, 1]  # trial t's random mask: seed + t
    assert summary["design"]["retain"] == "fresh" and "0.1 NLL" in summary["design"]["objective"]
