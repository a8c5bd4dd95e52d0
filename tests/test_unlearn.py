import pytest
import torch

from memlens import InputError, ParagraphSet, greedy_decode
from memlens.analyses.gradients import GradientMap
from memlens.core.metrics import teacher_forced_scores
from memlens.testing import random_tokens
from memlens.analyses.unlearn import SparseFineTuner


@pytest.fixture(scope="module")
def sets(neo):
    base = random_tokens(6, 20, neo.vocab_size, seed=21)
    ps = ParagraphSet.from_tokens(torch.cat([base, greedy_decode(neo, base, 20)], 1), prefix_len=20)
    return ps[:2], ps[2:]


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.tl_model.named_parameters()}


def test_strictly_sparse_and_exactly_restored(neo, sets):
    target, retain = sets
    before = snapshot(neo)
    ft = SparseFineTuner(neo)
    res = ft.unlearn(target[0], retain, mask="topk", fraction=0.01, steps=5, lr=0.05)
    after = snapshot(neo)
    changed = sum(int((after[n] != before[n]).sum()) for n in before)
    assert 0 < changed <= res.mask_size and res.weights_changed == changed
    trainable = {id(p) for p in ft.params.values()}
    frozen = [n for n, p in neo.tl_model.named_parameters() if id(p) not in trainable]
    assert frozen and all(torch.equal(after[n], before[n]) for n in frozen)
    assert res.mean("target", "em_after") < res.mean("target", "em_before")
    ft.restore()
    assert all(torch.equal(p, before[n]) for n, p in snapshot(neo).items())


def test_weight_decay_never_moves_unmasked_weights(neo, sets):
    """The paper's code flaw: AdamW decay moved 'frozen' weights. Here a 10-weight mask moves at
    most 10 weights whatever the optimizer does."""
    target, retain = sets
    ft = SparseFineTuner(neo)
    with ft.restored():
        res = ft.unlearn(target[0], retain, mask="random", fraction=1e-4, steps=3, lr=0.1)
        assert res.weights_changed <= res.mask_size == round(1e-4 * sum(p.numel() for p in ft.params.values()))


def test_masks(neo, sets, tmp_path):
    target, retain = sets
    ft = SparseFineTuner(neo)
    gmap = GradientMap(neo).compute(target[[0]], contrast=retain, progress=False)
    top = ft.make_mask("topk", 0.01, gmap)
    rnd = ft.make_mask("random", 0.01, gmap, seed=3)
    assert top.mask_kind == "topk" and top.n_selected == rnd.n_selected == round(0.01 * top.n_total)
    assert sum(int(m.sum()) for m in top.masks.values()) == top.n_selected
    assert rnd.seed == 3 and top.seed is None and top.fraction == 0.01
    every = ft.make_mask("all", 0.01, None)
    assert every.n_selected == every.n_total == sum(p.numel() for p in ft.params.values()) and every.fraction is None
    # the table, the layer counts and the overlap agree with the tensors
    table = top.to_dataframe()
    assert int(table["selected"].sum()) == top.n_selected and set(table["parameter"]) == set(ft.params)
    assert int(top.layer_counts().sum()) == int(table[table["layer"] >= 0]["selected"].sum())
    inter = sum(int((m & rnd.masks[n]).sum()) for n, m in top.masks.items())
    assert top.jaccard(rnd) == pytest.approx(inter / (2 * top.n_selected - inter))
    assert top.jaccard(top) == 1.0
    # a SparseMask saves, loads and can be passed back as a user mask
    loaded = type(top).load(top.save(tmp_path / "mask.safetensors"))
    assert all(torch.equal(loaded.masks[n], m) for n, m in top.masks.items()) and loaded.mask_kind == "topk"
    assert ft.make_mask(loaded, 0.5, None).n_selected == top.n_selected
    name = next(iter(ft.params))
    with pytest.raises(InputError, match="has shape"):
        ft.make_mask({name: torch.ones(3, dtype=torch.bool)}, 0.01, None)
    with pytest.raises(InputError, match="selects no weight"):
        ft.make_mask({name: torch.zeros_like(ft.params[name], dtype=torch.bool)}, 0.01, None)
    with pytest.raises(InputError, match="does not have"):
        ft.make_mask({"nope.weight": torch.ones(1)}, 0.01, None)


def test_edit_reaches_the_new_continuation(neo, sets):
    target, retain = sets
    new = random_tokens(1, 20, neo.vocab_size, seed=99)
    ft = SparseFineTuner(neo)
    with ft.restored():
        res = ft.edit(target[0], retain, new_continuation=new, mask="all", steps=30, lr=3e-3)
        row = res.to_dataframe().query("set == 'target'").iloc[0]
        assert row.em_new_before < 3 and row.em_new_after == 20


def test_dataframe_surface(neo, sets):
    target, retain = sets
    ft = SparseFineTuner(neo)
    with ft.restored():
        res = ft.unlearn(target[0], retain, other_memorized=target[1:], mask="topk", fraction=0.01, steps=2, lr=0.01)
    df = res.to_dataframe()
    assert list(df.columns[:6]) == ["set", "paragraph", "em_before", "em_after", "nll_before", "nll_after"]
    assert df["set"].tolist() == ["target", "retain", "retain", "retain", "retain", "other_memorized"]
    assert isinstance(res.weights_changed, int) and isinstance(res.mask_size, int)
    assert len(res.losses) == 2 and len(res.plot().data) == 3


def test_bad_input(neo, sets):
    target, retain = sets
    ft = SparseFineTuner(neo)
    other = ParagraphSet.from_tokens(random_tokens(2, 40, neo.vocab_size), prefix_len=10)
    with pytest.raises(InputError, match="differ in length"):
        ft.unlearn(target[0], other)
    with pytest.raises(InputError, match="unknown mask"):
        ft.unlearn(target[0], retain, mask="best")
    before = snapshot(neo)
    with pytest.raises(InputError, match="lower the learning rate"):
        ft.unlearn(target[0], retain, mask="all", steps=5, lr=1e20)
    assert all(torch.equal(p, before[n]) for n, p in snapshot(neo).items())
    nonmem = ParagraphSet.from_tokens(random_tokens(1, 40, neo.vocab_size, seed=5), prefix_len=20)
    with pytest.warns(UserWarning, match="not memorized"), ft.restored():
        ft.unlearn(nonmem[0], retain, mask="topk", fraction=0.01, steps=1, lr=1e-3)


def test_top1_changes_and_margins(neo, sets):
    """``top1_changed`` counts positions whose top-1 token moved (none for an untouched set, some
    for a target whose EM fell); ``min_margin`` is >= 0 on greedy references and matches a direct
    computation."""
    target, retain = sets
    ft = SparseFineTuner(neo)
    orig = teacher_forced_scores(neo, retain.tokens, retain.prefix_len, predictions=True)
    top1, margin = orig.top1, orig.margin
    assert torch.equal(top1, retain.continuations) and (margin >= 0).all()
    with ft.restored():
        res = ft.unlearn(target[0], retain, mask="all", steps=5, lr=0.05)
        df = res.to_dataframe()
        tgt = df[df["set"] == "target"].iloc[0]
        assert tgt.em_after < tgt.em_before and tgt.top1_changed >= 1
        top1_after = teacher_forced_scores(neo, retain.tokens, retain.prefix_len, predictions=True).top1
    expected = (top1_after != top1).sum(-1).tolist()
    assert df[df["set"] == "retain"]["top1_changed"].tolist() == expected
    assert df[df["set"] == "retain"]["min_margin"].tolist() == pytest.approx(margin.min(-1).values.tolist())
    assert res.summary()["retain_top1_changed"] == pytest.approx(sum(expected) / len(expected))


def test_selective_mask(neo, sets):
    """Same size as top-k; prefers weights the retain set is less sensitive to; a floor of 1 keeps
    mostly top-k's choice; bad floors are refused."""
    from memlens.analyses.mask_drawing import selective_mask

    target, retain = sets
    ft = SparseFineTuner(neo)
    gmap = GradientMap(neo).compute(target[[0]], contrast=retain, progress=False)
    sens = ft.retain_sensitivity(retain)
    assert ft.retain_sensitivity(retain) is sens and set(sens) == set(ft.params)
    top = ft.make_mask("topk", 0.01, gmap).masks
    selected = ft.make_mask("selective", 0.01, gmap, sensitivity=sens)
    sel = selected.masks
    assert selected.mask_kind == "selective"
    size = sum(int(m.sum()) for m in top.values())
    assert sum(int(m.sum()) for m in sel.values()) == size

    def mean_sensitivity(mask):
        return float(sum(sens[n][m].sum() for n, m in mask.items()) / size)

    assert mean_sensitivity(sel) < mean_sensitivity(top)
    near_top = selective_mask(gmap, sens, 0.01, floor=1.0)
    overlap = sum(int((near_top[n] & top[n]).sum()) for n in top)
    assert overlap > sum(int((sel[n] & top[n]).sum()) for n in top)
    with pytest.raises(InputError, match="quantile"):
        selective_mask(gmap, sens, 0.01, floor=0.0)
    with pytest.raises(InputError, match="sensitivity"):
        ft.make_mask("selective", 0.01, gmap)
    with ft.restored():
        res = ft.unlearn(target[0], retain, mask="selective", fraction=0.01, steps=3, lr=0.01)
    assert res.mask_kind == "selective" and res.weights_changed <= res.mask_size == size


def test_one_memorized_paragraph_is_enough(neo, sets):
    """With a single memorized paragraph, the 'other memorized' set is empty: it is left out of
    the table instead of failing (as the unlearn stage did when exactly one paragraph was memorized)."""
    from memlens import compare_masks

    target, retain = sets
    table = compare_masks(neo, target[:1], retain, other_memorized=target[:1], masks=("random",), steps=1,
                          progress=False)
    row = table.row("unlearn", "random")
    assert row["target_em_before"] == 20 and row["other_memorized_em_after"] != row["other_memorized_em_after"]  # NaN


def test_compare_masks_resumes_from_its_checkpoint(neo, sets, tmp_path, monkeypatch):
    from memlens import compare_masks

    target, retain = sets
    ckpt = tmp_path / "runs.partial"
    first = compare_masks(neo, target, retain, masks=("random", "all"), steps=1, progress=False, checkpoint=ckpt)
    assert len(ckpt.read_text().splitlines()) == 1 + 4  # the header, then 2 masks x 2 targets
    with ckpt.open("a") as f:
        f.write('{"key": ["unl')  # a torn last line, as a kill leaves it
    calls = []
    monkeypatch.setattr(SparseFineTuner, "unlearn", lambda *a, **k: calls.append(1))
    again = compare_masks(neo, target, retain, masks=("random", "all"), steps=1, progress=False, checkpoint=ckpt)
    assert not calls and again.to_dataframe().equals(first.to_dataframe())


def test_random_mask_checks_its_fraction(neo, sets):
    target, retain = sets
    ft = SparseFineTuner(neo)
    for bad in (0.0, -0.1, 1.5, float("nan"), float("inf")):
        with pytest.raises(InputError, match="fraction must be in"):
            ft.unlearn(target[0], retain, mask="random", fraction=bad, steps=1)
    assert ft.weights_changed() == 0


@pytest.mark.parametrize("failure", [KeyboardInterrupt, MemoryError])
def test_an_interrupted_run_leaves_the_weights_as_before_it(neo, sets, monkeypatch, failure):
    """Ctrl-C or an error in the middle of a run undoes that run's steps, and only them: an
    earlier finished run of the same tuner stays applied."""
    import memlens.core.sparse as sparse

    target, retain = sets
    ft = SparseFineTuner(neo)
    original = snapshot(neo)
    with ft.restored():
        ft.unlearn(target[0], retain, mask="topk", fraction=0.01, steps=2, lr=0.05)
        after_first = snapshot(neo)
        assert any(not torch.equal(after_first[n], original[n]) for n in original)
        real_step, steps = sparse.MaskedAdam.step, []

        def dies_on_third_step(self):
            steps.append(1)
            if len(steps) == 3:
                raise failure("stopped")
            real_step(self)

        monkeypatch.setattr(sparse.MaskedAdam, "step", dies_on_third_step)
        with pytest.raises(failure):
            ft.unlearn(target[1], retain, mask="topk", fraction=0.01, steps=5, lr=0.05)
        assert len(steps) == 3
        now = snapshot(neo)
        assert all(torch.equal(now[n], after_first[n]) for n in now)  # two steps taken, both undone
    assert all(torch.equal(p, original[n]) for n, p in snapshot(neo).items())


def test_retain_at_can_resample_target_paragraphs(neo, sets, tmp_path):
    """#41: the trade-off keeps each trial's target, so the interval at target EM 25 can cover which
    paragraphs were drawn (each (seed, target) its own frontier), not only seeds."""
    from memlens import MaskTradeoff, mask_tradeoff

    target, retain = sets
    res = mask_tradeoff(neo, target, retain, [1e-3, 1e-1], masks=("all",), steps=[2], seeds=[0, 1], progress=False)
    assert len(res.trials) == 2 * 2 * len(target) and {t["target"] for t in res.trials} == set(target.ids)
    by_seed, by_target = res.retain_at(0.0)["all"], res.retain_at(0.0, over="targets")["all"]
    assert by_target["n_units"] == 2 * len(target) and by_seed["n_seeds"] == 2
    loaded = MaskTradeoff.load(res.save(tmp_path / "t.safetensors"))
    assert loaded.trials == res.trials and "retain_at_target_25_over_targets" in loaded.summary()
    with pytest.raises(InputError, match="over must be"):
        res.retain_at(25.0, over="paragraphs")
