"""The official code's fine-tuning, one setting away: its KL term, its Adam with coupled weight
decay (kept strictly sparse here), its random-mask draw and Fig. 5's trial design."""

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import memlens as ml
from memlens import InputError, ParagraphSet, RunConfig, greedy_decode
from memlens.analyses.mask_comparison import MaskComparison, compare_masks, retain_batches
from memlens.analyses.mask_tradeoff import mask_tradeoff
from memlens.analyses.unlearn import FineTuneSettings, SparseFineTuner
from memlens.core.objectives import kl_to_reference
from memlens.core.sparse import MaskedAdam
from memlens.core.stats import bootstrap_mean_ci
from memlens.testing import random_tokens


@pytest.fixture(scope="module")
def sets(neo):
    base = random_tokens(8, 20, neo.vocab_size, seed=31)
    ps = ParagraphSet.from_tokens(torch.cat([base, greedy_decode(neo, base, 20)], 1), prefix_len=20)
    return ps[:2], ps[2:]


def test_kl_as_the_official_code_computes_it():
    """The code: KLDivLoss(reduction="batchmean")(log_softmax(model), softmax(frozen)) on
    [batch, 50 positions, vocab] = KL(frozen || model) summed over positions and vocabulary,
    divided by the batch."""
    g = torch.Generator().manual_seed(0)
    logits, frozen = torch.randn(3, 50, 17, generator=g), torch.randn(3, 50, 17, generator=g)
    code = torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(logits, -1), F.softmax(frozen, -1))
    ours = kl_to_reference(logits, frozen, direction="original||model", reduction="batchmean")
    torch.testing.assert_close(ours, code)
    # the paper's written formula, memlens's default: KL(model || frozen), mean over positions
    p, q = F.softmax(logits, -1), F.softmax(frozen, -1)
    by_hand = (p * (p.log() - q.log())).sum(-1).mean()
    torch.testing.assert_close(kl_to_reference(logits, frozen), by_hand)
    # batchmean = 50 x mean over positions; and the two directions differ on these logits
    torch.testing.assert_close(kl_to_reference(logits, frozen, reduction="batchmean"), 50 * by_hand)
    assert abs(float(ours) / 50 - float(by_hand)) > 1e-3


def test_coupled_weight_decay_reaches_the_masked_weights_only():
    """Masked weights follow torch Adam with coupled L2 decay exactly (grad + decay * weight, as
    in the code); weights outside the mask never move (the code's decay moved them)."""
    g = torch.Generator().manual_seed(1)
    w = torch.nn.Parameter(torch.randn(4, 5, generator=g))
    twin = torch.nn.Parameter(w.detach().clone())
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[:2] = True
    opt = MaskedAdam({"w": w}, {"w": mask}, lr=0.01, weight_decay=1.0)
    ref = torch.optim.Adam([twin], lr=0.01, weight_decay=1.0)
    start = w.detach().clone()
    for step in range(5):
        grad = torch.randn(4, 5, generator=g)
        opt.zero_grad()
        ref.zero_grad()
        w.grad, twin.grad = grad.clone(), grad.clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(w.detach()[mask], twin.detach()[mask])
    assert torch.equal(w.detach()[~mask], start[~mask])
    # decay alone (zero gradient) moves a masked weight: the decay is applied, not dropped
    opt2 = MaskedAdam({"w": w}, {"w": mask}, lr=0.01, weight_decay=1.0)
    before = w.detach().clone()
    w.grad = torch.zeros_like(w)
    opt2.step()
    assert not torch.equal(w.detach()[mask], before[mask]) and torch.equal(w.detach()[~mask], before[~mask])


def test_a_run_under_the_codes_settings_stays_sparse_and_records_them(neo, sets):
    target, retain = sets
    ft = SparseFineTuner(neo)
    paper = FineTuneSettings.paper_code(fraction=0.01)
    assert (paper.lr, paper.weight_decay, paper.steps, paper.nll_scale) == (1e-5, 1.0, 5, 0.1)
    with ft.restored():
        res = ft.unlearn(target[0], retain, mask="topk", **paper.to_dict())
        assert 0 < res.weights_changed <= res.mask_size
        assert len(res.losses) == 5
        cfg = res.provenance.config
        assert (cfg["kl_direction"], cfg["kl_reduction"], cfg["weight_decay"]) == ("original||model", "batchmean", 1.0)
    assert ft.weights_changed() == 0
    from memlens import RunConfig

    with pytest.raises(InputError, match="kl_reduction"):
        RunConfig().override({"unlearn.kl_reduction": "sum"})


def test_bernoulli_random_masks_draw_each_weight_with_probability_fraction(neo):
    ft = SparseFineTuner(neo)
    total = sum(p.numel() for p in ft.params.values())
    sizes = [sum(int(m.sum()) for m in ft.make_mask("random", 0.01, None, seed=s, random_draw="bernoulli").masks.values())
             for s in range(3)]
    exact = sum(int(m.sum()) for m in ft.make_mask("random", 0.01, None, seed=0).masks.values())
    assert exact == round(0.01 * total)
    sd = (total * 0.01 * 0.99) ** 0.5
    assert all(abs(n - 0.01 * total) < 5 * sd for n in sizes) and len(set(sizes)) > 1


def test_fresh_retain_batches_are_drawn_without_replacement():
    pool = ParagraphSet.from_tokens(torch.arange(7 * 4).view(7, 4), prefix_len=2)
    batches = retain_batches(pool, n_trials=5, per_trial=3, seed=0)
    assert all(len(b) == 3 and len(set(b.ids)) == 3 for b in batches)
    first_pass = [i for b in batches[:2] for i in b.ids]
    assert len(set(first_pass)) == 6  # the first 6 draws exhaust no paragraph twice
    assert {i for b in batches for i in b.ids} == set(pool.ids)
    assert retain_batches(pool, 2, None) == [pool, pool]
    with pytest.raises(InputError, match="retain_per_trial"):
        retain_batches(pool, 2, 8)


def test_fig5_trials_are_kept_paired_and_summarised(neo, sets, tmp_path):
    """One target per trial, a fresh retain batch per trial shared by every mask of that trial;
    every trial is kept and survives save/load; the means carry bootstrap intervals."""
    target, retain = sets
    table = compare_masks(neo, target, retain, masks=("random", "all"), steps=1, progress=False, n_trials=3,
                          retain_per_trial=2, seed=4)
    df = table.trials_dataframe()
    assert len(df) == 6 and table.targets == [target.ids[0], target.ids[1], target.ids[0]]
    by_trial = df.groupby("trial")["retain"].apply(lambda s: {tuple(x) for x in s})
    assert all(len(v) == 1 for v in by_trial)  # paired: the same batch for both masks
    assert len({next(iter(v)) for v in by_trial}) == 3  # fresh: another batch per trial
    row = table.row("unlearn", "all")
    vals = table.values("unlearn", "all", "retain_em_after")
    assert row["n_trials"] == 3 and row["retain_em_after"] == pytest.approx(sum(vals) / 3)
    assert row["retain_em_after_ci_low"] <= row["retain_em_after"] <= row["retain_em_after_ci_high"]
    path = table.save(tmp_path / "cmp.safetensors")
    again = MaskComparison.load(path)
    assert json.dumps(again.trials) == json.dumps(table.trials) and json.dumps(again.rows) == json.dumps(table.rows)
    fig = again.plot()
    assert sum(1 for t in fig.data if t.type == "box") == 2 * 4


def test_the_tradeoff_grid_has_a_row_per_mask_point_and_seed(neo, sets):
    target, retain = sets
    curves = mask_tradeoff(neo, target[:1], retain, lrs=[1e-4, 0.05], masks=("all", "random"), steps=[1, 2],
                           decays=["none", "decoupled:1"], seeds=[0, 1], progress=False)
    df = curves.to_dataframe()
    assert len(df) == 2 * 2 * 2 * 2 * 2 and set(df["decay"]) == {"none", "decoupled:1"} and set(df["seed"]) == {0, 1}
    strong = df[(df["mask"] == "all") & (df["steps"] == 2) & (df["decay"] == "none") & (df["seed"] == 0)].set_index("lr")
    assert strong.loc[0.05, "target_nll_after"] > strong.loc[1e-4, "target_nll_after"]
    assert len(curves.points("all")) == 8 and all(p["n_seeds"] == 2 for p in curves.points())
    assert len(curves.plot().data) == 2 * 2  # grid points and frontier per mask
    summary = curves.summary()
    assert set(summary["retain_at_target_25"]) == {"all", "random"}
    assert {p["lr"] for ps in summary["frontier"].values() for p in ps} <= {1e-4, 0.05}  # not rounded to 0.0
    assert summary["grid"]["steps"] == [1, 2] and summary["grid"]["lr"] == [1e-4, 0.05]


def _row(mask, seed, target, retain, lr=1e-3):
    return {"mask": mask, "lr": lr, "steps": 10, "decay": "none", "seed": seed, "target_em_after": target,
            "retain_em_after": retain, "target_em_before": 50.0, "retain_em_before": 50.0}


def test_frontiers_and_the_retain_em_at_target_25():
    from memlens.analyses.mask_tradeoff import MaskTradeoff

    pts = [(40, 48), (30, 40), (20, 35), (30, 30), (10, 10)]
    rows = [_row("topk", 0, t, r, lr=i) for i, (t, r) in enumerate(pts)]
    rows += [_row("topk", 1, t, r - 2, lr=i) for i, (t, r) in enumerate(pts)]
    rows += [_row("random", s, 48, 50) for s in (0, 1)]
    tr = MaskTradeoff(rows=rows)
    front = [(p["target_em_after"], p["retain_em_after"]) for p in tr.frontier("topk")]
    assert front == [(10, 9), (20, 34), (30, 39), (40, 47)]  # seed means; (30, 29) is beaten by (30, 39)
    at = tr.retain_at(25.0)
    assert at["topk"]["retain_em"] == pytest.approx((37.5 + 35.5) / 2) and at["topk"]["n_seeds"] == 2
    assert at["topk"]["ci_low"] <= at["topk"]["retain_em"] <= at["topk"]["ci_high"]
    assert math.isnan(at["random"]["retain_em"])  # a random mask never forgot that far
    assert tr.summary()["retain_at_target_25"]["random"]["retain_em"] is None


def test_per_target_reads_each_paragraphs_own_frontier():
    """#41: which target paragraphs a mask forgets cheaply: each target's frontier (over its trials
    at every grid point) read at target EM 25, NaN for a target no seed forgets that far."""
    from memlens.analyses.mask_tradeoff import MaskTradeoff

    def trial(target, seed, lr, t, r):
        return _row("topk", seed, t, r, lr=lr) | {"trial": 0, "target": target}

    trials = [trial("a", s, 0, 50, 48) for s in (0, 1)] + [trial("a", s, 1, 10, 40) for s in (0, 1)]
    trials += [trial("b", s, 0, 50, 45) for s in (0, 1)] + [trial("b", 0, 1, 40, 44), trial("b", 1, 1, 20, 30)]
    tr = MaskTradeoff(rows=[_row("topk", s, 30, 40, lr=lr) for s in (0, 1) for lr in (0, 1)], trials=trials)
    by = {r["target"]: r for r in tr.per_target(25.0)}
    assert by["a"]["retain_em"] == pytest.approx(40 + 10 * 15 / 40) and by["a"]["seeds_reaching"] == 2
    assert by["a"]["target_em_after"] == {"lr 0 x10 none": 50.0, "lr 1 x10 none": 10.0}
    assert by["b"]["seeds_reaching"] == 1 and by["b"]["n_seeds"] == 2  # seed 0 never reaches 25
    assert by["b"]["retain_em"] == pytest.approx(30 + 20 * 5 / 30)
    assert math.isnan(MaskTradeoff(rows=[], trials=[trial("c", 0, 0, 50, 50)]).per_target()[0]["retain_em"])
    # a point that forgets at no retain cost beats the untouched model: at less forgetting it still holds
    free = [trial("d", 0, 0, 12, 50), trial("d", 0, 1, 2, 20)]
    assert MaskTradeoff(rows=[], trials=free).per_target(25.0)[0]["retain_em"] == 50.0
    with pytest.raises(InputError, match="no per-trial rows"):
        MaskTradeoff(rows=tr.rows).per_target()


def test_a_grid_measured_in_parts_reads_like_one_grid():
    from memlens.analyses.mask_tradeoff import MaskTradeoff
    from memlens.core.results import Provenance

    pts = [(40, 48), (30, 40), (20, 35), (10, 10)]
    rows = [_row("topk", s, t, r, lr=i) for s in (0, 1) for i, (t, r) in enumerate(pts)]
    design = {"n_trials": 3, "retain_per_trial": 10}
    whole = MaskTradeoff(rows=rows, provenance=Provenance(model="m", config=design | {"lrs": [0, 1, 2, 3]}))
    first = MaskTradeoff(rows=[r for r in rows if r["lr"] < 2], provenance=Provenance(model="m", config=design | {"lrs": [0, 1]}))
    second = MaskTradeoff(rows=[r for r in rows if r["lr"] >= 2], provenance=Provenance(model="m", config=design | {"lrs": [3, 2]}))
    joined = MaskTradeoff.concat([first, second])
    assert joined.retain_at(25.0) == whole.retain_at(25.0) and joined.frontier("topk") == whole.frontier("topk")
    assert joined.provenance.config["lrs"] == [0, 1, 2, 3] and joined.provenance.config["n_trials"] == 3
    with pytest.raises(InputError, match="both measured mask 'topk' at lr 0, 10 steps, decay none, seed 0"):
        MaskTradeoff.concat([first, first])
    other = MaskTradeoff(rows=second.rows, provenance=Provenance(model="m", config=design | {"n_trials": 20}))
    with pytest.raises(InputError, match=r"part 1 was run with other settings than part 0 \(n_trials\)"):
        MaskTradeoff.concat([first, other])
    with pytest.raises(InputError, match="different models"):
        MaskTradeoff.concat([first, MaskTradeoff(rows=second.rows, provenance=Provenance(model="n", config=design))])


def test_a_tradeoff_grid_with_bad_points_is_refused(neo, sets):
    target, retain = sets
    for kwargs, match in (({"lrs": []}, "no point"), ({"lrs": [1e-3], "steps": [0]}, "steps 0 must be an integer >= 1"),
                          ({"lrs": [1e-3], "decays": ["decoupled:nan"]}, "weight decay 'decoupled:nan'"),
                          ({"lrs": [float("nan")]}, "lr nan must be a positive finite number")):
        with pytest.raises(InputError, match=match):
            mask_tradeoff(neo, target[:1], retain, masks=("random",), progress=False, **kwargs)
    for key, value in (("tradeoff.steps", [0]), ("tradeoff.decays", ["sometimes"]), ("tradeoff.seeds", [])):
        with pytest.raises(InputError, match=f"setting {key} = "):
            RunConfig().override({key: value})


def test_a_trial_is_prepared_once_for_all_its_masks(neo, sets, monkeypatch):
    """The objective's gradient map, the scores before and the reference logits are computed once
    per trial, whatever the number of masks; each step is one forward of target and retain together."""
    from memlens.analyses import unlearn

    target, retain = sets
    calls = {"map": 0, "forward": 0}
    real_run = unlearn.GradientMap.run

    def counting(self, *a, **k):
        calls["map"] += 1
        return real_run(self, *a, **k)

    monkeypatch.setattr(unlearn.GradientMap, "run", counting)
    table = compare_masks(neo, target[:2], retain, masks=("topk", "selective", "random"), steps=3, progress=False)
    assert calls["map"] == 2  # one objective map per trial, shared by top-k and selective
    hook = neo.tl_model.register_forward_pre_hook(lambda mod, args: calls.__setitem__("forward", calls["forward"] + 1))
    try:
        ft = ml.SparseFineTuner(neo, progress=False)
        with ft.restored():
            res = ft.unlearn(target[:1], retain, mask="random", steps=3)
    finally:
        hook.remove()
    assert res.optimizer_seconds <= res.seconds and len(res.losses) == 3
    # the trial: the references' check (one teacher-forced pass over target and retain, which also
    # tells whether the target is memorized), the retain set's reference logits, every set scored
    # before and after in one pass each (4 forwards), then one forward per step for both terms
    assert calls["forward"] == 4 + 3, calls
    assert {r["mask"] for r in table.trials} == {"topk", "selective", "random"}
    assert all("optimizer_seconds" in r for r in table.trials)


def test_the_first_step_loss_is_the_objective_of_separate_passes(neo, sets):
    from memlens.core.objectives import continuation_nll

    target, retain = sets
    ft = ml.SparseFineTuner(neo, progress=False)
    with ft.restored():
        res = ft.unlearn(target[:1], retain, mask="random", steps=2, nll_scale=0.5)
    with torch.no_grad():
        want = -0.5 * float(continuation_nll(neo, target[:1].tokens, target.prefix_len))  # KL is 0 at the start
    assert res.losses[0] == pytest.approx(want, abs=1e-5)


def test_bootstrap_interval():
    lo, hi = bootstrap_mean_ci([1.0, 2.0, 3.0, 4.0, 10.0])
    assert lo < 4.0 < hi and 1.0 <= lo and hi <= 10.0
    assert bootstrap_mean_ci([5.0]) == (5.0, 5.0)
    wide = bootstrap_mean_ci(torch.randn(10, generator=torch.Generator().manual_seed(0)).tolist())
    narrow = bootstrap_mean_ci(torch.randn(1000, generator=torch.Generator().manual_seed(0)).tolist())
    assert narrow[1] - narrow[0] < (wide[1] - wide[0]) / 4


def test_references_are_decoded_once_and_recited_paragraphs_not_at_all(neo, sets, monkeypatch):
    """A paragraph the model recites under teacher forcing is its own greedy continuation; the
    others are decoded, once per tuner, and equal greedy_decode's continuation."""
    from memlens.analyses import trial_cache

    recited, _ = sets
    fresh = ParagraphSet.from_tokens(random_tokens(3, 40, neo.vocab_size, seed=77), prefix_len=20)
    decoded = []
    real = trial_cache.greedy_decode
    monkeypatch.setattr(trial_cache, "greedy_decode", lambda m, prefixes, *a, **k: decoded.append(len(prefixes)) or real(m, prefixes, *a, **k))
    ft = SparseFineTuner(neo, progress=False)
    ref = ft.reference(recited)
    assert decoded == [] and torch.equal(ref.tokens, recited.tokens)
    ft.prepare_references(fresh, recited)
    ft.prepare_references(fresh)
    assert decoded == [3]
    assert torch.equal(ft.reference(fresh).continuations, real(neo, fresh.prefixes, 20))


def test_a_tradeoff_grid_prepares_each_trial_once_and_matches_compare_masks(neo, sets, monkeypatch):
    """mask_tradeoff's shared tuner reuses a seed's trials at every grid point (one objective map
    per trial, the retain references decoded once) and changes no number: each point equals
    compare_masks run alone."""
    from memlens.analyses import trial_cache, unlearn

    target, _ = sets
    pool = ParagraphSet(random_tokens(6, 40, neo.vocab_size, seed=78), 20, 20, [f"pool-{i}" for i in range(6)])
    calls = {"map": 0, "decode": 0}
    real_run, real_decode = unlearn.GradientMap.run, trial_cache.greedy_decode

    def counting_run(self, *a, **k):
        calls["map"] += 1
        return real_run(self, *a, **k)

    def counting_decode(*a, **k):
        calls["decode"] += 1
        return real_decode(*a, **k)

    monkeypatch.setattr(unlearn.GradientMap, "run", counting_run)
    monkeypatch.setattr(trial_cache, "greedy_decode", counting_decode)
    kw = dict(masks=("topk", "random"), n_trials=2, retain_per_trial=3)
    curves = mask_tradeoff(neo, target, pool, lrs=[1e-3, 3e-2], steps=[1, 2], seeds=[0], progress=False, **kw)
    assert calls == {"map": 2, "decode": 1}, calls  # 2 trials, 4 grid points
    alone = compare_masks(neo, target, pool, lr=3e-2, steps=2, seed=0, progress=False, **kw)
    df = curves.to_dataframe().set_index(["mask", "lr", "steps"])
    for row in alone.rows:
        point = df.loc[(row["mask"], 3e-2, 2)]
        for col in ("target_em_after", "retain_em_after", "target_nll_after", "retain_nll_after"):
            assert point[col] == pytest.approx(row[col], abs=1e-6), (row["mask"], col)


def test_a_target_the_model_does_not_recite_is_named_in_a_warning(neo, sets):
    """The memorization check reads the cached references: a recited target warns nothing, a
    random one is named."""
    recited, _ = sets
    fresh = ParagraphSet(random_tokens(1, 40, neo.vocab_size, seed=80), 20, 20, ["not-memorized-0"])
    pool = ParagraphSet(random_tokens(3, 40, neo.vocab_size, seed=81), 20, 20, [f"pool-{i}" for i in range(3)])
    ft = ml.SparseFineTuner(neo, progress=False)
    with ft.restored():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ft.unlearn(recited[:1], pool, mask="random", steps=1)
        with pytest.warns(UserWarning, match=r"\['not-memorized-0'\] are not memorized"):
            ft.unlearn(fresh, pool, mask="random", steps=1)


def test_compare_masks_refuses_other_memorized_paragraphs_split_differently(neo, sets):
    """The references of every set are prepared before the first run: a set with another
    prefix/continuation split gets the one-line error, not a shape error from torch."""
    target, retain = sets
    other = ParagraphSet(random_tokens(2, 30, neo.vocab_size, seed=79), 10, 20, ["o-0", "o-1"])
    with pytest.raises(InputError, match="differ in length"):
        compare_masks(neo, target[:1], retain, other_memorized=other, masks=("random",), steps=1, progress=False)
