"""The SmolLM2 organism (a real pretrained LM with planted paragraphs), on its micro recipe:
paragraphs planted 24 times are recited, those seen once are not, the base model recited none of
them, and the planting keeps the language model (held-out NLL within 10% of the base model's)."""

from __future__ import annotations

import pytest

import memlens as ml
from memlens.core.errors import ModelLoadError


@pytest.fixture(scope="module")
def smollm2(organism_cache):
    try:
        from memlens.organism.smollm2 import smollm2_gguf_path

        smollm2_gguf_path()
    except ModelLoadError as e:
        pytest.skip(str(e))
    return ml.HookedModel.organism(size="smollm2-micro", cache_dir=organism_cache, progress=False)


def test_planted_paragraphs_are_recited_by_duplication(smollm2):
    truth = smollm2.ground_truth
    assert smollm2.model_type == "llama" and smollm2.n_layers == 30 and smollm2.n_heads == 9
    scan = ml.scan(smollm2, truth.paragraph_set(), progress=False)
    by_copies = truth.evaluate(scan)["planted_by_copies"]
    assert by_copies[24]["memorized"] == by_copies[24]["n"] == 3
    assert by_copies[1]["memorized"] == 0 and by_copies[1]["mean_em"] <= 10
    held = scan.to_dataframe().query("group == 'held_out'")
    assert (held["em"] <= 10).all()


def test_the_base_model_recited_none_and_kept_its_language_model(smollm2):
    stats = smollm2.ground_truth.stats
    assert stats["base_planted_mean_em"] <= 10  # chosen among paragraphs the base model does not recite
    assert stats["held_out_nll_ratio"] <= 1.10
    assert stats["held_out_nll"] == pytest.approx(stats["base_held_out_nll"] * stats["held_out_nll_ratio"], rel=1e-3)


def test_recommended_settings_come_with_the_model(smollm2):
    cfg = ml.RunConfig.recommended("organism-smollm2")
    assert cfg.heads.exact_top > 0 and cfg.perturb.max_paragraphs < ml.RunConfig().perturb.max_paragraphs
    assert ml.RunConfig.recommended("organism") == ml.RunConfig()
