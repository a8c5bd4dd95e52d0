"""The localizers on a tiny random model: one protocol (one verb, [layer, neuron] scores, weights
untouched), each method computing what it says, the registry, and clear errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import memlens as ml
from memlens import InputError, ParagraphSet
from memlens.analyses.localization import (IntegratedGradientsLocalizer, Localizer, ZeroOutLocalizer,
                                           check_localizer_names)
from memlens.analyses.localization.base import _REGISTRY
from memlens.testing import random_tokens


@pytest.fixture(scope="module")
def sets(neo):
    paras = ParagraphSet.from_tokens(random_tokens(6, 24, neo.vocab_size, seed=2), prefix_len=12)
    return paras[:2], paras[2:]


def _nll(model, tokens, P):
    logits = model(tokens[:, :-1])[:, P - 1 :].float()
    return F.cross_entropy(logits.transpose(1, 2), tokens[:, P:], reduction="none").mean(-1)


FAST = {"slimming": {"max_steps": 3}, "hard_concrete": {"max_steps": 3}, "integrated_gradients": {"steps": 4}}


@pytest.mark.parametrize("name", ml.localizer_names())
def test_every_localizer_keeps_the_protocol(neo, sets, name):
    target, contrast = sets
    before = {n: p.detach().clone() for n, p in neo.tl_model.named_parameters()}
    loc = ml.make_localizer(name, neo, progress=False, **FAST.get(name, {}))
    assert isinstance(loc, ml.Localizer) and isinstance(loc, ml.Analysis)
    res = loc.run(target, contrast=contrast)
    assert res.localizer == name and res.neuron_scores.shape == (neo.n_layers, neo.d_mlp)
    assert torch.isfinite(res.neuron_scores).all()
    if name not in ("slimming", "hard_concrete"):  # three mask steps on random text may leave every drop at 0
        assert res.neuron_scores.std() > 0
    assert all(torch.equal(p.detach(), before[n]) for n, p in neo.tl_model.named_parameters())
    top = res.top(3)
    assert top.sum(1).tolist() == [3] * neo.n_layers
    assert (res.weight_scores is not None) == loc.scores_weights
    assert len(res.loss_trace) == (res.steps if name in ("slimming", "hard_concrete") else 0)
    assert len(res.to_dataframe()) == neo.n_layers * neo.d_mlp and res.summary()["localizer"] == name
    res.plot()


def test_window_gain_is_the_stopping_criterion_s_quantity():
    assert ml.window_gain([4.0, 3.0, 2.0, 2.5, 1.5], 2) == pytest.approx(0.25)  # best 2.0 before, 1.5 in the window
    assert ml.window_gain([4.0, 2.0, 2.5, 3.0], 2) == 0.0
    assert ml.window_gain([4.0, 2.0], 2) is None


@pytest.mark.parametrize("name", ["slimming", "hard_concrete"])
def test_a_learned_mask_records_its_loss_and_a_stop_by_its_criterion_has_a_small_last_window_gain(neo, sets, name):
    """The trace has one loss per step; a run that stopped before its cap did so because its last
    ``patience`` steps did not beat the best loss by ``tol``: its window gain is at most
    tol / (1 - tol); a run cut by its cap still reports its gain over a window."""
    target, contrast = sets
    loc = ml.make_localizer(name, neo, progress=False, max_steps=200, patience=4, tol=0.05)
    res = loc.run(target, contrast=contrast)
    assert len(res.loss_trace) == res.steps and all(math.isfinite(x) and x >= 0 for x in res.loss_trace)
    assert res.steps < 200, "a tolerance of 5% over 4 steps should stop well before 200 steps"
    assert ml.window_gain(res.loss_trace, 4) <= 0.05 / 0.95 + 1e-9
    capped = ml.make_localizer(name, neo, progress=False, max_steps=12, patience=100).run(target, contrast=contrast)
    assert capped.steps == 12 and ml.window_gain(capped.loss_trace, 4) is not None


@pytest.mark.parametrize("name", ["slimming", "hard_concrete"])
def test_restore_best_scores_the_mask_of_the_lowest_loss_step(neo, sets, name):
    """The trace's entry j is the loss of the mask after j updates, so restore_best's scores are a
    plain run's scores after argmin(trace) updates (the same seed draws the same gates)."""
    target, contrast = sets
    kw = dict(progress=False, max_steps=12, patience=100, lr=0.5)
    best = ml.make_localizer(name, neo, restore_best=True, **kw).run(target, contrast=contrast)
    j = min(range(len(best.loss_trace)), key=best.loss_trace.__getitem__)
    last = ml.make_localizer(name, neo, **kw).run(target, contrast=contrast)
    assert last.loss_trace == best.loss_trace
    if j == 0:
        want = ml.make_localizer(name, neo, **kw).init_params()
        assert torch.equal(best.neuron_scores, want.float())
    else:
        upto = ml.make_localizer(name, neo, **(kw | {"max_steps": j})).run(target, contrast=contrast)
        torch.testing.assert_close(best.neuron_scores, upto.neuron_scores)
    assert best.provenance.config.get("restore_best") is True and "restore_best" not in last.provenance.config
    with pytest.raises(InputError, match="restore_best is True or False"):
        ml.make_localizer(name, neo, restore_best="yes")


def test_zero_out_is_the_nll_increase_of_each_neuron(neo, sets):
    target, _ = sets
    res = ZeroOutLocalizer(neo, batch_size=5, progress=False).run(target)  # 5 rows: neurons split across batches
    layout = ml.NeuronLayout(neo)
    base = _nll(neo, target.tokens, target.prefix_len)
    for layer, n in [(0, 0), (1, 17), (neo.n_layers - 1, neo.d_mlp - 1)]:
        neurons = torch.zeros(layout.n_layers, layout.d_mlp, dtype=torch.bool)
        neurons[layer, n] = True
        with torch.no_grad(), layout.dropped(neurons):
            want = float((_nll(neo, target.tokens, target.prefix_len) - base).mean())
        assert res.neuron_scores[layer, n] == pytest.approx(want, abs=1e-5)


def test_zero_out_and_ig_resumed_at_their_layer_equal_the_full_pass(neo, sets, monkeypatch):
    """Both resume each pass at the layer they intervene on (HookedModel.forward_from); the scores
    are bit for bit those of the full forward pass they ran before."""
    import memlens.analyses.localization.attribution as attribution

    target, _ = sets
    def both():
        return (ZeroOutLocalizer(neo, batch_size=5, progress=False).run(target).neuron_scores,
                IntegratedGradientsLocalizer(neo, steps=3, progress=False).run(target).neuron_scores)
    resumed = both()
    monkeypatch.setattr(attribution, "can_forward_from", lambda model: False)
    full = both()
    for a, b in zip(resumed, full):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_the_screen_zeroes_a_multiple_of_what_the_caller_keeps_exactly(neo, sets):
    """keep=k with screen_multiple m: the top m*k of each layer by the screen get brute force's
    value, and the top k of the result are among them; without keep the share applies."""
    target, _ = sets
    brute = ZeroOutLocalizer(neo, progress=False).run(target).neuron_scores
    calls = []
    hook = neo.tl_model.register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape[0]))
    try:
        screened = ZeroOutLocalizer(neo, screen=0.5, screen_multiple=2, progress=False).run(target, keep=3)
    finally:
        hook.remove()
    # less the unablated forward, the screen's backward pass and each layer's residual pass
    rows_zeroed = sum(calls) - (2 + neo.n_layers) * len(target)
    assert rows_zeroed == 6 * neo.n_layers * len(target)
    top = screened.neuron_scores.topk(3, dim=1).indices
    torch.testing.assert_close(screened.neuron_scores.gather(1, top), brute.gather(1, top), rtol=1e-4, atol=1e-6)
    assert ZeroOutLocalizer(neo, screen=0.5, screen_multiple=2).screened_per_layer() == math.ceil(0.5 * neo.d_mlp)
    with pytest.raises(InputError, match="keep is a count"):
        ZeroOutLocalizer(neo, progress=False).run(target, keep=0)
    with pytest.raises(InputError, match="screen_multiple needs screen"):
        ZeroOutLocalizer(neo, screen_multiple=4)
    with pytest.raises(InputError, match="screen_multiple must be"):
        ZeroOutLocalizer(neo, screen=0.2, screen_multiple=0.5)


def test_integrated_gradients_batches_its_steps_and_sums_to_the_effect(neo, sets):
    """One forward pass per paragraph and layer (the steps go as one batch); and completeness: the
    attributions of a layer sum to log p(continuation) with the layer's activations minus with
    them zeroed (up to the Riemann error, small at 64 steps)."""
    target, _ = sets
    calls = []
    hook = neo.tl_model.register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape[0]))
    try:
        res = IntegratedGradientsLocalizer(neo, steps=64, progress=False).run(target[:1])
    finally:
        hook.remove()
    # per layer: the residual entering it (one row), then the 64 steps as one batch resumed there
    # (the first call on a model also learns its blocks' output form: one more one-row pass)
    assert [c for c in calls if c != 1] == [64] * neo.n_layers
    assert neo.n_layers <= calls.count(1) <= neo.n_layers + 1
    layout = ml.NeuronLayout(neo)
    P = target.prefix_len
    with torch.no_grad():
        full = -float(_nll(neo, target.tokens[:1], P))
    for layer in range(neo.n_layers):
        neurons = torch.zeros(layout.n_layers, layout.d_mlp, dtype=torch.bool)
        neurons[layer] = True
        with torch.no_grad(), layout.dropped(neurons):
            zero = -float(_nll(neo, target.tokens[:1], P))
        assert float(res.neuron_scores[layer].sum()) == pytest.approx(full - zero, rel=0.05, abs=1e-3)


def test_the_contrastive_gradient_ranks_as_the_nll_gradient(neo, sets):
    """At the model's own weights the KL term's gradient vanishes: the paper preset's contrastive
    objective localizes exactly as the NLL does."""
    target, contrast = sets
    a = ml.make_localizer("gradient", neo, progress=False).run(target)
    b = ml.make_localizer("gradient_contrastive", neo, progress=False).run(target, contrast=contrast)
    torch.testing.assert_close(a.neuron_scores, b.neuron_scores, rtol=1e-4, atol=1e-7)


def test_activation_scores_are_mean_absolute_activations(neo, sets):
    target, _ = sets
    res = ml.make_localizer("activation", neo, progress=False).run(target)
    layout = ml.NeuronLayout(neo)
    _, acts, _ = neo.capture(target.tokens[:, :-1], [layout.hook_name(1)])
    want = acts[layout.hook_name(1)][:, target.prefix_len - 1 :].abs().mean(1).mean(0)
    torch.testing.assert_close(res.neuron_scores[1], want.float(), rtol=1e-5, atol=1e-6)


def test_a_new_localizer_is_one_class_and_one_line(neo, sets):
    class LastLayer(Localizer):
        """Scores the last layer's neurons by index (a toy)."""

        def scores(self, paragraphs, contrast, progress):
            s = torch.zeros(self.layout.n_layers, self.layout.d_mlp)
            s[-1] = torch.arange(self.layout.d_mlp, dtype=torch.float)
            return s, None, 0

    ml.register_localizer("last_layer", LastLayer)
    try:
        assert "last_layer" in ml.localizer_names()
        res = ml.make_localizer("last_layer", neo).run(sets[0])
        assert res.localizer == "last_layer" and res.top(1)[-1, -1]
    finally:
        _REGISTRY.pop("last_layer")


def test_bad_input_is_one_line(neo, sets):
    target, contrast = sets
    with pytest.raises(InputError, match="unknown localizer.*'nope'.*the localizers are gradient, "):
        ml.make_localizer("nope", neo)
    with pytest.raises(InputError, match="unknown localizer"):
        check_localizer_names(["gradient", "hardconcrete"])
    with pytest.raises(InputError, match="got no paragraphs"):
        ml.make_localizer("activation", neo).run(target[:0])
    with pytest.raises(InputError, match="needs contrast="):
        ml.make_localizer("gradient_contrastive", neo).run(target)
    too_long = ParagraphSet.from_tokens(random_tokens(1, neo.n_ctx + 10, neo.vocab_size), prefix_len=50)
    with pytest.raises(InputError, match="context"):
        ml.make_localizer("activation", neo).run(too_long)
    with pytest.raises(InputError, match="registered already"):
        ml.register_localizer("gradient", ZeroOutLocalizer)
    with pytest.raises(InputError, match="ratios: a ratio must be in"):
        ml.LocalizationBenchmark(neo).run(target, memorized=target, non_memorized=contrast, ratios=(1.5,))
    with pytest.raises(InputError, match="needs at least one seed"):
        ml.LocalizationBenchmark(neo).run(target, memorized=target, non_memorized=contrast, seeds=())
    with pytest.raises(InputError, match="without ground truth"):
        ml.LocalizationBenchmark(neo).run()


def test_injection_refuses_sites_the_model_lacks(neo, sets):
    target, _ = sets
    with pytest.raises(InputError, match="layer 9 out of range"):
        ml.inject(neo, target, [(9, "W_in")])
    with pytest.raises(InputError, match="outside the trainable set"):
        ml.inject(neo, target, mask={"lm_head.weight": torch.ones(1, dtype=torch.bool)})
    with pytest.raises(InputError, match="empty ParagraphSet"):
        ml.inject_neurons(neo, target[:0], 0.1)
    with pytest.raises(InputError, match=r"ratio must be in \(0, 1\)"):
        ml.inject_neurons(neo, target, 2.0)


def test_the_localize_settings_refuse_bad_values_in_one_line():
    from memlens import RunConfig

    with pytest.raises(InputError, match=r"setting localize.localizers = .*unknown localizer\(s\) 'nope'; the localizers "
                                         r"are gradient, gradient_contrastive, activation"):
        RunConfig().override({"localize.localizers": ["nope"]})
    with pytest.raises(InputError, match=r"setting localize.ratios = \(1.5,\): must be a list of shares in \(0, 1\)"):
        RunConfig().override({"localize.ratios": [1.5]})
    with pytest.raises(InputError, match="setting localize.seeds"):
        RunConfig().override({"localize.seeds": []})
    assert RunConfig().override({"localize.localizers": ["gradient", "random"]}).localize.localizers == ("gradient", "random")


def test_the_benchmark_rows_of_a_learned_mask_say_how_far_from_converged_it_stopped(neo, tmp_path):
    """Each slimming row carries its loss trace and its last-window gain; the table keeps the
    largest gain over seeds; a checkpoint row with a damaged trace is refused."""
    import json

    paras = ParagraphSet.from_tokens(random_tokens(10, 24, neo.vocab_size, seed=3), prefix_len=12)
    kw = dict(memorized=paras[:2], non_memorized=paras[2:6], ratios=(0.05,), seeds=(0, 1), inject_steps=20,
              contrast_paragraphs=2, del_paragraphs=2, del_natural=False, localizers=["slimming", "random"],
              n_paragraphs=1, localizer_settings={"slimming": {"max_steps": 6, "patience": 2}}, checkpoint=tmp_path / "b.jsonl")
    res = ml.LocalizationBenchmark(neo, progress=False).run(paras[6:], **kw)
    slim = [r for r in res.rows if r["localizer"] == "slimming"]
    assert len(slim) == 2 and all(len(r["loss_trace"]) == r["steps"] for r in slim)
    assert [r["loss_window_gain"] for r in slim] == [round(ml.window_gain(r["loss_trace"], 2), 6) for r in slim]
    assert all("loss_trace" not in r for r in res.rows if r["localizer"] == "random")
    table = {r["localizer"]: r for r in res.table("neuron")}
    assert table["slimming"]["loss_window_gain"] == max(r["loss_window_gain"] for r in slim)
    assert "loss_window_gain" not in table["random"]
    fig = res.plot_convergence()
    assert [len(t.y) for t in fig.data] == [r["steps"] for r in slim]
    with pytest.raises(InputError, match="no row has a loss trace"):
        ml.LocalizationBenchmarkResult(rows=[r for r in res.rows if r["localizer"] == "random"],
                                       injections=res.injections).plot_convergence()
    lines = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    block = next(line for line in lines[1:] if len(line["key"]) == 3)  # a finished (level, ratio, seed) block
    block["record"]["rows"][0]["loss_trace"] = ["low"]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    with pytest.raises(InputError, match="is damaged"):
        ml.LocalizationBenchmark(neo, progress=False).run(paras[6:], **kw)


def test_a_natural_del_run_keeps_its_loss_trace_once(neo):
    """One learned mask serves every ratio of the natural DEL: its trace is on the first ratio's
    row only (as its time is), its last-window gain on every row."""
    paras = ParagraphSet.from_tokens(random_tokens(10, 24, neo.vocab_size, seed=3), prefix_len=12)
    res = ml.LocalizationBenchmark(neo, progress=False).run(
        paras[6:], memorized=paras[:3], non_memorized=paras[3:7], ratios=(0.05, 0.1), seeds=(0,), inject_steps=20,
        contrast_paragraphs=2, del_paragraphs=2, localizers=["slimming"], n_paragraphs=1,
        localizer_settings={"slimming": {"max_steps": 6, "patience": 2}})
    natural = sorted((r for r in res.rows if r["level"] == "natural"), key=lambda r: r["ratio"])
    assert [r["ratio"] for r in natural] == [0.05, 0.1]
    assert len(natural[0]["loss_trace"]) == natural[0]["steps"] and "loss_trace" not in natural[1]
    assert natural[0]["loss_window_gain"] == natural[1]["loss_window_gain"] is not None
