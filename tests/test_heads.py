"""HeadLocalizer on tiny random models: the table, the views, saving and bad input."""

from __future__ import annotations

import pytest
import torch

from memlens import InputError, ParagraphSet
from memlens.analyses.heads import HeadLocalizer, HeadReport
from memlens.testing import random_model, random_tokens


@pytest.fixture(scope="module")
def sets(neo):
    toks = random_tokens(4, 24, neo.vocab_size, seed=5)
    clean = ParagraphSet.from_tokens(toks, prefix_len=12)
    pert = toks.clone()
    pert[:, 5] = (pert[:, 5] + 3) % neo.vocab_size
    pert[:, 14:] = (pert[:, 14:] + 1) % neo.vocab_size
    other = ParagraphSet.from_tokens(random_tokens(4, 24, neo.vocab_size, seed=6), prefix_len=12)
    return clean, ParagraphSet.from_tokens(pert, prefix_len=12), other


@pytest.fixture(scope="module")
def report(neo, sets):
    clean, pert, other = sets
    return HeadLocalizer(neo).localize(clean, other, perturbed=pert, progress=False)


def test_report_table(report, neo):
    df = report.to_dataframe()
    assert len(df) == neo.n_layers * neo.n_heads
    assert list(df.columns[:3]) == ["layer", "head", "combined_rank"]
    for kind in ("gradient", "contrastive", "activation_gradient", "patching", "attribution", "rare_attention"):
        assert kind in df.columns and f"rank_{kind}" in df.columns
    assert sorted(df["combined_rank"]) == list(range(1, len(df) + 1))
    assert df["combined_rank"].is_monotonic_increasing
    assert {"gradient_W_Q", "activation_gradient_z", "patching_z_noising", "attribution_v_denoising", "rare_token_tau"} <= set(df.columns)
    assert report.n_patch_pairs == 4
    assert set(report.agreement) == {f"{k}_{d}" for k in "zqkv" for d in ("noising", "denoising")}


def test_combined_rank_is_mean_rank(report):
    best = report.top(1).iloc[0]
    ranks = [report.rank(k)[int(best["layer"]), int(best["head"])] for k in report.combined_from]
    w = torch.tensor([report.weights[k] for k in report.combined_from])
    assert best.combined_score == pytest.approx(float((torch.stack(ranks) * w).sum() / w.sum()))
    # causal evidence weighs as much as the correlational kinds together
    assert report.weights["patching"] == pytest.approx(sum(w.tolist()) - report.weights["patching"])
    assert "contrastive" not in report.combined_from  # equals the NLL map at the model's weights
    assert torch.allclose(report.columns["contrastive"], report.columns["gradient"], rtol=1e-4)


def test_where_and_evidence_text(report):
    w = report.where(1, 2)
    assert set(w) == set(report.evidence) | {"combined"}
    assert report.evidence_text(1, 2).startswith("L1H2: combined #")
    with pytest.raises(InputError, match="layer 7 is out of range"):
        report.where(7, 0)
    with pytest.raises(InputError, match="head 9 is out of range"):
        report.where(0, 9)


def test_save_load_roundtrip(report, tmp_path):
    report.save(tmp_path / "heads.safetensors")
    back = HeadReport.load(tmp_path / "heads.safetensors")
    assert back.to_dataframe().equals(report.to_dataframe())
    assert torch.allclose(back.rare.by_rank, report.rare.by_rank)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(InputError, match="bad.json: not a memlens result file"):
        HeadReport.load(tmp_path / "bad.json")
    report.rare.save(tmp_path / "rare.safetensors")
    with pytest.raises(InputError, match="holds a RareAttentionResult, not a HeadReport"):
        HeadReport.load(tmp_path / "rare.safetensors")


def test_plots_and_views(report, neo, sets):
    pytest.importorskip("plotly")
    assert len(report.plot("patching").data) == 1
    assert len(report.plot_all().data) == len(report.evidence) + 1
    views = report.attention_view(neo, sets[0], 1, 2)
    assert [v.component for v in views] == ["AttentionHeads", "ColoredTokens"]
    assert "L1H2 *" in views[0].fragment()


def test_bad_input(neo, sets):
    clean, pert, other = sets
    loc = HeadLocalizer(neo)
    with pytest.raises(InputError, match="unknown evidence"):
        loc.localize(clean, evidence=["vibes"], progress=False)
    with pytest.raises(InputError, match="differ in length"):
        loc.localize(clean, perturbed=ParagraphSet.from_tokens(pert.tokens, prefix_len=10), evidence=["patching"], progress=False)
    with pytest.raises(InputError, match="3 perturbed paragraphs for 4"):
        loc.localize(clean, perturbed=pert[:3], evidence=["patching"], progress=False)
    rep = loc.localize(clean, evidence=["gradient", "contrastive"], progress=False)
    assert rep.evidence == ["gradient"] and "no non-memorized" in rep.notes[0]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_other_architectures(arch):
    model = random_model(arch, seed=2)
    toks = random_tokens(2, 20, model.vocab_size, seed=7)
    pert = toks.clone()
    pert[:, 3] = (pert[:, 3] + 1) % model.vocab_size
    pert[:, 12:] = (pert[:, 12:] + 1) % model.vocab_size
    rep = HeadLocalizer(model).localize(ParagraphSet.from_tokens(toks, prefix_len=10),
                                        perturbed=ParagraphSet.from_tokens(pert, prefix_len=10),
                                        evidence=["activation_gradient", "patching", "attribution", "rare_attention"], progress=False)
    assert torch.isfinite(rep.columns["patching"]).all() and rep.columns["patching"].abs().sum() > 0


def test_attribution_screen_then_exact_patching_of_the_top_heads(neo, sets, report):
    """exact_top=3: attribution patching screens all heads, exact patching runs on the three it
    ranks highest, with the same values a full run gives there; the rest are NaN and rank last."""
    clean, pert, other = sets
    screened = HeadLocalizer(neo).localize(clean, other, perturbed=pert, evidence=("patching", "gradient"),
                                           exact_top=3, progress=False)
    patched = ~screened.columns["patching"].isnan()
    assert int(patched.sum()) == 3
    top3 = set(report.columns["attribution"].flatten().topk(3).indices.tolist())
    assert set(patched.flatten().nonzero().flatten().tolist()) == top3
    torch.testing.assert_close(screened.columns["patching"][patched], report.columns["patching"][patched])
    ranks = screened.rank("patching")
    assert ranks[patched].max() <= 3 and ranks[~patched].min() > 3
    assert "attribution" not in screened.columns and any("exact patching on the 3 heads" in n for n in screened.notes)


def test_head_ablation_equals_a_hand_ablated_forward(neo, tmp_path):
    """Each cell is the teacher-forced EM lost under a hand-written zero ablation of that head's z;
    cells not asked for stay NaN; the result ranks, tabulates, saves and loads."""
    from memlens.analyses.head_ablation import HeadAblation, HeadAblationResult, head_ablation_em_drop
    from memlens.core.metrics import greedy_decode, teacher_forced_scores

    prefixes = random_tokens(6, 12, neo.vocab_size, seed=21)
    mem = ParagraphSet.from_tokens(torch.cat([prefixes, greedy_decode(neo, prefixes, 8)], 1), prefix_len=12)
    cells = [(0, 1), (1, 0), (1, 3)]
    res = HeadAblation(neo, batch_size=4).run(mem, heads=cells, progress=False)
    assert res.baseline_em == 8.0  # the model's own greedy continuation is recited in full
    for L, h in cells:
        def zero_head(z, hook, h=h):
            z[:, :, h] = 0.0
            return z
        with neo.hooks(fwd_hooks=[(f"blocks.{L}.attn.hook_z", zero_head)]):
            em = teacher_forced_scores(neo, mem.tokens, mem.prefix_len, 4).em.float().mean()
        assert res.drop(L, h) == pytest.approx(8.0 - float(em))
    assert int((~res.em_drop.isnan()).sum()) == 3
    df = res.to_dataframe()
    assert len(df) == 3 and df["em_drop"].is_monotonic_decreasing
    assert res.top_head() == (int(df.iloc[0]["layer"]), int(df.iloc[0]["head"]))
    loaded = HeadAblationResult.load(res.save(tmp_path / "ablation.safetensors"))
    assert torch.equal(loaded.em_drop.isnan(), res.em_drop.isnan()) and loaded.summary() == res.summary()
    assert len(res.plot().data) == 1
    every = head_ablation_em_drop(neo, mem, progress=False)
    assert not bool(every.em_drop.isnan().any()) and every.drop(0, 1) == pytest.approx(res.drop(0, 1))
    with pytest.raises(InputError, match="ablation mode"):
        HeadAblation(neo).run(mem, mode="half")  # type: ignore[arg-type]
    with pytest.raises(InputError):
        HeadAblation(neo).run(mem, heads=[(0, neo.n_heads)])


def test_head_attention_views_over_many_paragraphs(neo, sets):
    """Fig. 6 bottom / Fig. 12: one view per paragraph whose values are the head's attention from
    the first continuation token, as a hand-captured pattern gives it."""
    from memlens.analyses.attention_views import head_attention_views

    clean, _, other = sets
    views = head_attention_views(neo, clean, 1, 2, max_paragraphs=3, batch_size=2)
    assert len(views) == 3 and all(v.component == "ColoredTokens" for v in views)
    P = clean.prefix_len
    _, acts, _ = neo.capture(clean.tokens[:3, : P + 1], ["blocks.1.attn.hook_pattern"])
    for i, v in enumerate(views):
        expected = acts["blocks.1.attn.hook_pattern"][i, 2, P, :P].tolist()
        assert v.props["values"] == pytest.approx(expected, abs=1e-6)
        assert len(v.props["tokens"]) == P and clean.ids[i] in v.title
    with pytest.raises(InputError):
        head_attention_views(neo, clean, neo.n_layers, 0)
    with pytest.raises(InputError, match="max_paragraphs"):
        head_attention_views(neo, clean, 0, 0, max_paragraphs=0)


def test_localizer_patches_only_the_perturbed_positions_when_asked(neo, sets):
    from memlens.analyses.patching import exact_patching, make_patch_pairs

    clean, pert, _ = sets
    report = HeadLocalizer(neo).localize(clean, perturbed=pert, evidence=["patching"], patch_kinds=["z"],
                                         patch_positions="perturbed", progress=False)
    pairs = make_patch_pairs(clean, pert)
    expected = sum(exact_patching(neo, p, kinds=("z",), positions="perturbed").noising[:, 0] for p in pairs) / len(pairs)
    torch.testing.assert_close(report.columns["patching"], expected.float(), atol=1e-5, rtol=1e-4)
    assert report.provenance.config["patch_positions"] == "perturbed"
    with pytest.raises(InputError, match="patch_positions"):
        HeadLocalizer(neo).localize(clean, perturbed=pert, evidence=["patching"], patch_positions="first",
                                    progress=False)
