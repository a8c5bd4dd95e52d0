"""The resurfacing audit (#42): the quantizer against a hand computation and compressed-tensors,
NPO, the recovered share, each attack putting the weights back bit for bit, relearning touching
only the trainable set, resumption, and the stage."""

from __future__ import annotations

import json
import math

import pytest
import torch

import memlens as ml
from memlens.analyses.resurfacing import recovered_share
from memlens.analyses.resurfacing_attacks import below_half_bin, relearn, relearn_localization
from memlens.core.objectives import npo_loss, sequence_nll
from memlens.core.quantize import SCHEMES, QuantScheme, quantize_dequantize
from memlens.testing import random_model, random_tokens


# --- the quantizer --------------------------------------------------------------------------------
def test_rtn_int4_per_channel_equals_a_hand_computation():
    w = torch.tensor([[0.1, -0.2, 0.3, -0.4]])
    sym, step = quantize_dequantize(w, QuantScheme(4, None, True))
    # scale = 0.4 / 7.5; w / scale = 1.875, -3.75, 5.625, -7.5 -> 2, -4, 6, -8 (half to even)
    scale = 0.4 / 7.5
    torch.testing.assert_close(sym, torch.tensor([[2, -4, 6, -8]]) * scale)
    torch.testing.assert_close(step, torch.full((1, 4), scale))
    asym, _ = quantize_dequantize(w, QuantScheme(4, None, False))
    # scale = 0.7 / 15; zero = round(-8 + 0.4 / scale) = 1; q = round(w / scale + 1) = 3, -3, 7, -8
    scale = 0.7 / 15
    torch.testing.assert_close(asym, torch.tensor([[2, -4, 6, -9]]) * scale)


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_the_round_trip_error_is_within_half_a_bin(scheme):
    w = torch.randn(8, 300) * 0.02  # 300 inputs: a partial last group of 128
    deq, step = quantize_dequantize(w, scheme)
    assert deq.shape == w.shape and bool(((deq - w).abs() <= step / 2 + 1e-7).all())
    assert len(torch.unique(deq[0, :128])) <= 2 ** scheme.bits  # one group holds at most 2**bits levels


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_the_quantizer_equals_compressed_tensors(scheme):
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

    w = torch.randn(16, 256, generator=torch.Generator().manual_seed(1)) * 0.05
    args = QuantizationArgs(num_bits=scheme.bits, symmetric=scheme.symmetric,
                            strategy="group" if scheme.group_size else "channel", group_size=scheme.group_size)
    if scheme.group_size:
        g = w.view(16, -1, scheme.group_size)
        scale, zero = calculate_qparams(g.amin(-1), g.amax(-1), args)
    else:
        scale, zero = calculate_qparams(w.amin(-1, keepdim=True), w.amax(-1, keepdim=True), args)
    assert torch.equal(quantize_dequantize(w, scheme)[0], fake_quantize(w, scale, zero, args))


def test_schemes_parse_and_refuse():
    assert [QuantScheme.parse(s.name) for s in SCHEMES] == list(SCHEMES)
    for bad in ("int4", "int4-g0-sym", "int9-channel-sym", "fp4-g128-sym", "int4-g128-both"):
        with pytest.raises(ml.InputError):
            QuantScheme.parse(bad)


def test_half_a_bin_counts_the_changes_that_round_away():
    changed = {"w": torch.tensor([[True, True, False]])}
    delta = {"w": torch.tensor([[0.01, 0.2, 5.0]])}
    steps = {"w": torch.full((1, 3), 0.1)}
    assert below_half_bin(changed, delta, steps) == (1, 2)


# --- NPO and the recovered share -------------------------------------------------------------------
def test_npo_starts_as_gradient_ascent_and_saturates():
    logits = torch.randn(2, 5, 11, requires_grad=True)
    cont = torch.randint(0, 11, (2, 5))
    ref = sequence_nll(logits, cont).detach()
    loss = npo_loss(logits, cont, ref, beta=0.1)
    assert math.isclose(loss.item(), 2 * math.log(2) / 0.1, rel_tol=1e-6)
    (g_npo,) = torch.autograd.grad(loss, logits)
    (g_nll,) = torch.autograd.grad(sequence_nll(logits, cont).mean(), logits)
    torch.testing.assert_close(g_npo, -g_nll)  # at the reference: gradient ascent on the summed NLL
    far = npo_loss(logits, cont, ref - 200.0, beta=0.1)  # NLL far above the reference: the loss flattens
    (g_far,) = torch.autograd.grad(far, logits)
    assert g_far.abs().max() < 1e-3 * g_nll.abs().max()


def test_recovered_share_reads_means_and_has_an_interval():
    rows = [{"em_before": 50, "em_unlearned": 10, "em_after": a} for a in (10, 30, 50, 30)]
    share, lo, hi = recovered_share(rows)
    assert share == pytest.approx(0.5) and lo <= share <= hi and 0 <= lo and hi <= 1
    nothing = [{"em_before": 50, "em_unlearned": 50, "em_after": 50}]
    assert math.isnan(recovered_share(nothing)[0])


def test_relearn_localization_measures_moving_back():
    changed = {"w": torch.tensor([True, True, False, False])}
    unlearn = {"w": torch.tensor([1.0, -1.0, 0.0, 0.0])}
    back = {"w": torch.tensor([-0.5, 0.5, 0.0, 0.0])}
    before = after = {"w": torch.tensor([True, False, False, False])}
    out = relearn_localization(before, after, changed, unlearn, back)
    assert out["moved_back_share"] == 1.0 and out["cosine_relearn_vs_undo"] == pytest.approx(1.0)
    assert out["relearn_mass_in_mask"] == 1.0 and out["enrichment"] == pytest.approx(2.0)
    assert out["jaccard_before_vs_relearned"] == 1.0


# --- the attacks on a model -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def recited():
    """A random model and paragraphs it recites (its own greedy continuations)."""
    model = random_model("gpt_neo", seed=21)
    prefixes = random_tokens(16, 12, model.vocab_size, seed=4)
    tokens = torch.cat([prefixes, ml.greedy_decode(model, prefixes, 12)], 1)
    return model, ml.ParagraphSet.from_tokens(tokens, prefix_len=12)


def test_relearning_changes_only_the_trainable_set(recited):
    model, paras = recited
    tuner = ml.SparseFineTuner(model)
    params = tuner.params
    everything = {n: p.detach().clone() for n, p in model.tl_model.named_parameters()}
    with ml.core.model.preserved_weights(model.tl_model):
        scores, delta = relearn(model, params, paras[:2], {"other": paras[2:4]}, (1, 3), 1e-3, 2, 0)
        moved = {n for n, p in model.tl_model.named_parameters() if not torch.equal(p.detach(), everything[n])}
    trainable = {id(p) for p in params.values()}
    assert moved and all(id(dict(model.tl_model.named_parameters())[n]) in trainable for n in moved)
    assert set(scores) == {1, 3} and len(scores[3]["other"]) == 2 and set(delta) == set(params)


def test_the_audit_restores_the_weights_and_resumes(recited, tmp_path, monkeypatch):
    from memlens.analyses import resurfacing

    model, paras = recited
    before = {n: p.detach().clone() for n, p in model.tl_model.named_parameters()}
    design = ml.ResurfacingSettings(group_size=2, relearn_steps=(1, 2), relearn_batch=2, unrelated_paragraphs=2,
                                    schemes=("int8-channel-sym", "int4-g128-asym"), prefix_lengths=(4,), lengthen=3,
                                    prefix_perturbations=2, noise_scales=(0.5,), noise_draws=2)
    kw = dict(masks=["all", "random"], objectives=["paper", "npo"], n_trials=2, retain_per_trial=2, design=design,
              lr={"all": 1e-3, "random": 1e-1}, settings=ml.FineTuneSettings.paper_code(steps=2))
    put_backs = []
    real = resurfacing.SparseFineTuner._put_back
    monkeypatch.setattr(resurfacing.SparseFineTuner, "_put_back", lambda self, w: (put_backs.append(1), real(self, w)))
    res = ml.ResurfacingAudit(model, progress=False).run(paras[:6], paras[6:], control=paras[10:12],
                                                         checkpoint=tmp_path / "a.jsonl", **kw)
    assert all(torch.equal(p.detach(), before[n]) for n, p in model.tl_model.named_parameters())
    assert len(put_backs) >= 2 * 2 * 2 * 5  # after every attack of every block (and at each block's end)
    df = res.to_dataframe()
    assert set(df["attack"]) == {"none", *ml.analyses.resurfacing.ATTACKS}
    assert {"V", "T", "control", "target", "retain"} <= set(df["set"])
    assert (df[df["set"].isin(["target", "T", "V"])]["em_before"] == 12).all()  # the model recites its own text
    # resume: every block comes from the checkpoint, nothing is unlearned again
    monkeypatch.setattr(resurfacing.ResurfacingAudit, "_block", lambda *a, **k: pytest.fail("recomputed a block"))
    again = ml.ResurfacingAudit(model, progress=False).run(paras[:6], paras[6:], control=paras[10:12],
                                                           checkpoint=tmp_path / "a.jsonl", **kw)
    assert json.dumps(again.rows) == json.dumps(res.rows)
    # trial t is drawn from seed + t alone: fewer trials read the first ones back (a run in parts)
    first = ml.ResurfacingAudit(model, progress=False).run(paras[:6], paras[6:], control=paras[10:12],
                                                           checkpoint=tmp_path / "a.jsonl", **(kw | {"n_trials": 1}))
    assert first.rows and json.dumps(first.rows) == json.dumps([r for r in res.rows if r["trial"] == 0])
    with pytest.raises(ml.InputError, match="other settings"):
        ml.ResurfacingAudit(model, progress=False).run(paras[:6], paras[6:], control=paras[10:12],
                                                       checkpoint=tmp_path / "a.jsonl", **(kw | {"seed": 3}))
    path = res.save(tmp_path / "r.safetensors")
    loaded = ml.ResurfacingResult.load(path)
    assert loaded.rows == res.rows and loaded.summary()["headline"] == res.summary()["headline"]
    assert res.plot().data


def test_the_audit_refuses_bad_designs(recited):
    model, paras = recited
    audit = ml.ResurfacingAudit(model, progress=False)
    for kwargs, message in (({"masks": ["topkk"]}, "masks must be a non-empty list"),
                            ({"attacks": "quantize"}, "attacks must be a list"),
                            ({"objectives": ["npo", "npo"]}, "twice"),
                            ({"lr": {"all": 1e-3}}, "no learning rate for mask"),
                            ({"n_trials": 0}, "n_trials must be")):
        with pytest.raises(ml.InputError, match=message):
            audit.run(paras[:6], paras[6:], control=paras[10:], **kwargs)
    with pytest.raises(ml.InputError, match="groups of 4"):
        audit.run(paras[:3], paras[6:], control=paras[10:])
    for bad in ({"group_size": 1}, {"relearn_steps": ()}, {"schemes": ("int3",)}, {"noise_scales": (float("nan"),)},
                {"relearn_lr": 0.0}):
        with pytest.raises(ml.InputError):
            ml.ResurfacingSettings(**bad)


# --- the stage on the tiny organism ---------------------------------------------------------------
def test_the_resurface_stage_on_the_tiny_organism(organism, organism_cache, tmp_path):
    from memlens.run.cli import main

    out = tmp_path / "run"
    toml = tmp_path / "s.toml"
    toml.write_text('model = "organism-tiny"\n\n[resurface]\nmasks = ["all", "topk"]\nmask_lrs = [0.001, 0.01]\n'
                    'objectives = ["paper"]\nn_trials = 1\nsteps = 3\nrelearn_steps = [2]\nschemes = ["int4-g128-asym"]\n'
                    'prefix_perturbations = 2\nnoise_draws = 1\nnoise_scales = [1.0]\n')
    assert main(["resurface", "--out", str(out), "--config", str(toml), "--cache-dir", organism_cache, "--quiet"]) == 0
    summary = json.loads((out / "resurface.summary.json").read_text())
    assert summary["trials"] == 1 and summary["precision"] == "fp32"
    assert {r["attack"] for r in summary["headline"]} == {"none", *ml.analyses.resurfacing.ATTACKS}
    assert not (out / "resurfacing.blocks.partial").exists()
    assert main(["report", "--out", str(out), "--quiet"]) == 0
    html = (out / "report.html").read_text()
    assert "Resurfacing: does an unlearned paragraph come back?" in html and "could not be drawn" not in html
