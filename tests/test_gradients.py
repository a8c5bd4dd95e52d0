import pytest
import torch
import torch.nn.functional as F

from memlens import InputError, ParagraphSet
from memlens.analyses.gradients import GradientMap, GradientMapResult
from memlens.testing import random_tokens


@pytest.fixture(scope="module")
def paras(neo):
    return ParagraphSet.from_tokens(random_tokens(6, 40, neo.vocab_size, seed=7), prefix_len=20)


@pytest.fixture(scope="module")
def nll_map(neo, paras):
    return GradientMap(neo).compute(paras, batch_size=4, progress=False)


def test_scores_are_max_abs_gradient_of_each_slice(neo, paras, nll_map):
    """Independent check on the plain HuggingFace model: autograd w.r.t. HF parameters, sliced by hand."""
    hf = neo.plain_model()
    names = {
        "W_Q": "attn.attention.q_proj.weight", "W_K": "attn.attention.k_proj.weight",
        "W_V": "attn.attention.v_proj.weight", "W_O": "attn.attention.out_proj.weight",
        "W_in": "mlp.c_fc.weight", "W_out": "mlp.c_proj.weight",
    }
    params = dict(hf.named_parameters())
    wanted = [params[f"transformer.h.{L}.{n}"] for L in range(neo.n_layers) for n in names.values()]
    logits = hf(paras.tokens[:, :-1]).logits[:, 19:]
    loss = F.cross_entropy(logits.transpose(1, 2), paras.tokens[:, 20:])
    grads = dict(zip([(L, k) for L in range(neo.n_layers) for k in names], torch.autograd.grad(loss, wanted)))
    df = nll_map.to_dataframe()
    dh = neo.d_head
    for row in df.itertuples():
        g = grads[(row.layer, row.component)]
        if row.component in ("W_Q", "W_K", "W_V"):
            g = g[row.head * dh : (row.head + 1) * dh]
        elif row.component == "W_O":
            g = g[:, row.head * dh : (row.head + 1) * dh]
        assert row.score == pytest.approx(g.abs().max().item(), rel=1e-4, abs=1e-9)
    assert nll_map.loss == pytest.approx(loss.item(), rel=1e-5)


def test_dataframe_surface(neo, nll_map):
    df = nll_map.to_dataframe()
    assert list(df.columns[:4]) == ["layer", "component", "head", "score"]
    assert len(df) == neo.n_layers * (4 * neo.n_heads + 2)
    assert set(df[df.component.isin(["W_in", "W_out"])]["head"]) == {-1}
    top = nll_map.top(3)
    assert top["score"].tolist() == sorted(df["score"], reverse=True)[:3]


def test_only_the_paper_trainable_set_gets_gradients(neo, paras):
    flags = {n: p.requires_grad for n, p in neo.tl_model.named_parameters()}
    res = GradientMap(neo).compute(paras, progress=False)
    assert set(res.weight_grads) == {s.param_name for c in neo.components for s in c.slices}
    assert not any("wte" in n or "bias" in n or "ln" in n for n in res.weight_grads)
    assert {n: p.requires_grad for n, p in neo.tl_model.named_parameters()} == flags
    assert all(p.grad is None for p in neo.tl_model.parameters())


def test_batch_size_does_not_change_the_map(neo, paras, nll_map):
    other = GradientMap(neo).compute(paras, batch_size=1, progress=False)
    torch.testing.assert_close(other.scores, nll_map.scores, rtol=1e-4, atol=1e-8)


def test_aggregations(neo, paras, nll_map):
    l1 = GradientMap(neo).compute(paras, aggregation="l1", progress=False)
    mean = GradientMap(neo).compute(paras, aggregation="mean", progress=False)
    sizes = torch.tensor([neo.components[k].numel for k in l1.keys], dtype=torch.float)
    torch.testing.assert_close(mean.scores, l1.scores / sizes, rtol=1e-5, atol=1e-10)
    assert torch.all(l1.scores >= nll_map.scores)
    assert torch.all(nll_map.signed.abs() == nll_map.scores)


def test_contrastive_at_the_original_weights_is_minus_nll(neo, paras, nll_map):
    """KL(model || frozen copy of itself) has zero gradient where the two agree, so at the
    original weights the contrastive gradient is exactly minus the NLL gradient."""
    contrast = ParagraphSet.from_tokens(random_tokens(4, 40, neo.vocab_size, seed=8), prefix_len=20)
    c = GradientMap(neo).compute(paras, contrast=contrast, progress=False)
    assert c.objective == "contrastive"
    torch.testing.assert_close(c.scores, nll_map.scores, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(c.signed, -nll_map.signed, rtol=1e-4, atol=1e-7)


def test_kept_weight_gradients_are_magnitudes_and_masks_rank_them(neo, paras):
    """weight_grads is |dNLL/dW| of a hand backward (signed only when asked), so a top-k mask takes
    the largest gradients of either sign: the paper's |gradient| mask. (Until this test, a local
    name shadowed the flag and every map kept signed gradients: masks took the largest positive
    ones only.)"""
    from memlens.core.objectives import continuation_nll
    from memlens.core.sparse import only_trainable

    gm = GradientMap(neo)
    kept = gm.run(paras, progress=False)
    signed = gm.run(paras, signed_weight_grads=True, progress=False)
    owned = {s.param_name: s.param for c in neo.components for s in c.slices}
    with only_trainable(neo.tl_model, owned.values()):
        loss = continuation_nll(neo, paras.tokens, paras.prefix_len)
        grads = torch.autograd.grad(loss, list(owned.values()))
    for (name, p), g in zip(owned.items(), grads):
        torch.testing.assert_close(kept.weight_grads[name], g.abs(), rtol=1e-4, atol=1e-8)
        torch.testing.assert_close(signed.weight_grads[name], g, rtol=1e-4, atol=1e-8)
    flat = torch.cat([g.flatten() for g in grads])
    mask = kept.mask(count=200)
    chosen = torch.cat([mask[n].flatten() for n in owned])
    assert set(torch.topk(flat.abs(), 200).indices.tolist()) == set(chosen.nonzero().flatten().tolist())
    assert (flat[chosen] < 0).any()  # negative gradients are chosen too


def test_per_paragraph_maps_in_one_pass_equal_single_maps(any_model):
    paras = ParagraphSet.from_tokens(random_tokens(3, 30, any_model.vocab_size, seed=1), prefix_len=15)
    gm = GradientMap(any_model)
    fast = gm.compute_per_paragraph(paras, progress=False)
    for i, r in enumerate(fast):
        single = gm.compute(paras[[i]], keep_weight_grads=False, progress=False)
        torch.testing.assert_close(r.scores, single.scores, rtol=1e-4, atol=1e-8)
        assert r.paragraph_ids == [paras.ids[i]]


def test_masks(nll_map):
    total = sum(g.numel() for g in nll_map.weight_grads.values())
    m = nll_map.mask(count=50)
    assert sum(int(x.sum()) for x in m.values()) == 50
    chosen = torch.cat([nll_map.weight_grads[n][m[n]] for n in m])
    rest = torch.cat([nll_map.weight_grads[n][~m[n]] for n in m])
    assert chosen.min() >= rest.max()
    f = nll_map.mask(fraction=0.01)
    assert sum(int(x.sum()) for x in f.values()) == round(0.01 * total)
    per = nll_map.mask(fraction=0.01, scope="per_layer")
    for layer in (0, 1):
        names = [n for n in per if f".h.{layer}." in n]
        n_layer = sum(nll_map.weight_grads[n].numel() for n in names)
        assert sum(int(per[n].sum()) for n in names) == pytest.approx(0.01 * n_layer, abs=1)
    with pytest.raises(InputError, match="exactly one"):
        nll_map.mask()


def test_save_load(nll_map, tmp_path):
    nll_map.save(tmp_path / "g.safetensors")
    back = GradientMapResult.load(tmp_path / "g.safetensors")
    assert back.keys == nll_map.keys and torch.equal(back.scores, nll_map.scores)
    fig = nll_map.plot()
    assert len(fig.data) == 5


def test_bad_input(neo, paras):
    gm = GradientMap(neo)
    with pytest.raises(InputError, match="empty"):
        gm.compute(paras[[]])
    other = ParagraphSet.from_tokens(random_tokens(2, 40, neo.vocab_size), prefix_len=10)
    with pytest.raises(InputError, match="differ in length"):
        gm.compute(paras, contrast=other)
    with pytest.raises(InputError, match="layer 7 out of range"):
        gm.compute(paras, components=[(7, "W_Q", 0)])
    with pytest.raises(InputError, match="unknown aggregation"):
        gm.compute(paras, aggregation="median")
    w = neo.components[(0, "W_V", 0)].weights()[0]
    saved = w.clone()
    w[0, 0] = float("nan")
    try:
        with pytest.raises(InputError, match="non-finite NLL for paragraph '0'"):
            gm.compute(paras, progress=False)
    finally:
        w.copy_(saved)


def test_activation_gradients_match_autograd(neo, paras):
    from memlens.analyses.activation_gradients import activation_gradients

    res = activation_gradients(neo, paras[:3], progress=False)
    assert res.values.shape == (3, neo.n_layers, 4, neo.n_heads, 39)
    # independent check for one paragraph, layer 1, v: autograd through a hook that keeps the tensor
    kept = {}

    def keep(t, hook):
        t.retain_grad()
        kept["v"] = t
        return t

    with neo.hooks(fwd_hooks=[("blocks.1.attn.hook_v", keep)]):
        logits = neo(paras.tokens[1:2, :-1])[:, 19:]
        F.cross_entropy(logits.transpose(1, 2), paras.tokens[1:2, 20:]).backward()
    expected = kept["v"].grad.abs().amax(-1)[0].T  # [head, pos]
    for p in neo.tl_model.parameters():
        p.grad = None
    torch.testing.assert_close(res.values[1, 1, 2], expected, rtol=1e-4, atol=1e-9)
    assert res.values[:, :, :, :, 19].sum() > 0
    assert res.head_scores("v").shape == (neo.n_layers, neo.n_heads)
    assert len(res.to_dataframe()) == neo.n_layers * neo.n_heads * 4


def test_batches_split_when_they_do_not_fit(neo, paras, nll_map, monkeypatch):
    import importlib

    mod = importlib.import_module("memlens.analyses.gradients")
    real = mod.continuation_nll

    def limited(model, tokens, *a, **k):
        if len(tokens) > 2:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 TB")
        return real(model, tokens, *a, **k)

    monkeypatch.setattr(mod, "continuation_nll", limited)
    with pytest.warns(UserWarning, match="retrying the gradient map") as caught:
        res = GradientMap(neo).compute(paras, batch_size=8, progress=False)
    assert [str(w.message)[-12:] for w in caught] == ["batch_size=4", "batch_size=2"]
    torch.testing.assert_close(res.scores, nll_map.scores, rtol=1e-4, atol=1e-8)


def test_profiles_by_em_range_reuse_maps_already_computed(neo, paras, nll_map, monkeypatch):
    """A range whose paragraphs are exactly those of a map already computed is not computed again,
    and gives the same row as computing it."""
    from memlens import ScanResult, profiles_by_em_range

    result = ScanResult(paragraphs=paras, em=torch.tensor([0, 0, 0, 20, 20, 20]), nll=torch.zeros(6),
                        memorized_min_em=20)
    fresh = profiles_by_em_range(neo, result, bins=((0, 10), (11, 20)), progress=False)
    low = GradientMap(neo).compute(paras[:3], keep_weight_grads=False, signed_weight_grads=True, progress=False)
    calls = []
    compute = GradientMap.compute
    monkeypatch.setattr(GradientMap, "compute", lambda self, *a, **k: calls.append(1) or compute(self, *a, **k))
    reused = profiles_by_em_range(neo, result, bins=((0, 10), (11, 20)), progress=False, maps=[low])
    assert len(calls) == 1  # only the 11-20 range
    assert reused.rows[0]["n"] == 3 and reused.rows[0]["total"] == pytest.approx(fresh.rows[0]["total"], rel=1e-5)
    assert reused.rows[0]["W_in_sum"] == pytest.approx(fresh.rows[0]["W_in_sum"], rel=1e-5)
    # a map without signed weight gradients cannot give the component statistics: computed again
    calls.clear()
    profiles_by_em_range(neo, result, bins=((0, 10),), progress=False,
                         maps=[GradientMap(neo).compute(paras[:3], keep_weight_grads=False, progress=False)])
    assert len(calls) == 2  # the map passed in, then the range itself


def test_em_range_component_statistics_equal_a_hand_computation(neo, paras):
    """Fig. 9 as the code computes it: per kind sum |g|, var g, max g, |min g| over all its weights;
    per layer the attention and MLP |g| sums; from one backward pass of the range's mean NLL."""
    from memlens import ScanResult, profiles_by_em_range
    from memlens.core.objectives import continuation_nll

    result = ScanResult(paragraphs=paras, em=torch.tensor([0, 0, 0, 20, 20, 20]), nll=torch.zeros(6),
                        memorized_min_em=20)
    row = profiles_by_em_range(neo, result, bins=((0, 10),), progress=False).rows[0]
    params = {sl.param_name: sl.param for c in neo.components for sl in c.slices}
    for p in neo.tl_model.parameters():
        p.grad = None
    continuation_nll(neo, paras[:3].tokens, paras.prefix_len).backward()
    grads = {n: p.grad.detach().clone() for n, p in params.items()}
    for p in neo.tl_model.parameters():
        p.grad = None
    for kind in ("W_Q", "W_O", "W_in"):
        g = torch.cat([sl.of(grads[sl.param_name]).flatten() for c in neo.components if c.key.kind == kind
                       for sl in c.slices])
        assert row[f"{kind}_sum"] == pytest.approx(float(g.abs().sum()), rel=1e-4)
        assert row[f"{kind}_var"] == pytest.approx(float(g.var()), rel=1e-3)
        assert (row[f"{kind}_max"], row[f"{kind}_min"]) == pytest.approx((float(g.max()), float(g.min().abs())), rel=1e-4)
    attn0 = sum(float(sl.of(grads[sl.param_name]).abs().sum()) for c in neo.components
                if c.key.layer == 0 and c.key.kind in ("W_Q", "W_K", "W_V", "W_O") for sl in c.slices)
    assert row["attn_0"] == pytest.approx(attn0, rel=1e-4)
    assert row["score_var"] > 0


def test_activation_gradients_of_the_first_continuation_token(neo, paras):
    """The paper's Fig. 6 loss (the code's I_range=[49, 50]): only the first continuation token's
    NLL; positions after the one that predicts it get no gradient."""
    from memlens.analyses.activation_gradients import activation_gradients

    res = activation_gradients(neo, paras[:2], loss_tokens=1, progress=False)
    kept = {}

    def keep(t, hook):
        t.retain_grad()
        kept["q"] = t
        return t

    with neo.hooks(fwd_hooks=[("blocks.0.attn.hook_q", keep)]):
        logits = neo(paras.tokens[:1, :-1])[:, 19]
        F.cross_entropy(logits, paras.tokens[:1, 20]).backward()
    expected = kept["q"].grad.abs().amax(-1)[0].T
    for p in neo.tl_model.parameters():
        p.grad = None
    torch.testing.assert_close(res.values[0, 0, 0], expected, rtol=1e-4, atol=1e-9)
    assert res.values[:, :, :, :, 20:].abs().sum() == 0 and res.values[:, :, :, :, :20].sum() > 0
    with pytest.raises(InputError, match="loss_tokens"):
        activation_gradients(neo, paras[:1], loss_tokens=0, progress=False)
    first = activation_gradients(neo, paras[:2], loss_position=0, progress=False)
    torch.testing.assert_close(first.values, res.values)  # one token at index 0 = the first token
    third = activation_gradients(neo, paras[:2], loss_position=2, progress=False)
    P = paras.prefix_len
    assert third.values[..., P + 2 :].abs().sum() == 0 and third.values[..., P + 1].sum() > 0  # predicted from P+1
    with pytest.raises(InputError, match="not both"):
        activation_gradients(neo, paras[:1], loss_tokens=1, loss_position=0, progress=False)


def test_mlp_activation_gradients_beside_the_heads(neo, paras):
    """Fig. 10's MLP columns: |dNLL/d mlp.hook_post| max over d_mlp per token, as a hand capture."""
    from memlens.analyses.activation_gradients import activation_gradients

    res = activation_gradients(neo, paras[:2], mlp_kinds=("pre", "post"), progress=False)
    assert res.mlp_values.shape == (2, neo.n_layers, 2, paras.tokens.shape[1] - 1)
    P = paras.prefix_len

    def loss_fn(logits):
        import torch.nn.functional as F
        return F.cross_entropy(logits[:, P - 1 :].transpose(1, 2).float(), paras.tokens[:2, P:], reduction="none").mean(-1).sum()

    _, _, grads = neo.capture(paras.tokens[:2, :-1], ["blocks.1.mlp.hook_post"], loss_fn=loss_fn)
    torch.testing.assert_close(res.mlp_values[:, 1, 1], grads["blocks.1.mlp.hook_post"].abs().amax(-1).float(), rtol=1e-4, atol=1e-7)
    assert res.mlp_scores("post").shape == (neo.n_layers,)
    assert set(res.to_dataframe()["kind"]) >= {"mlp_pre", "mlp_post"} and "mlp_post" in res.summary()
    with pytest.raises(InputError, match="MLP activation"):
        activation_gradients(neo, paras[:1], mlp_kinds=("mid",), progress=False)


def test_pair_activation_gradients_equal_a_hand_backward(neo):
    """Fig. 10: each run's own token NLL at the first changed position, read at the perturbed
    prefix token and at the last position, averaged over pairs."""
    from memlens import ParagraphSet, greedy_decode, make_patch_pairs, pair_activation_gradients
    from memlens.testing import random_tokens

    prefixes = random_tokens(3, 10, neo.vocab_size, seed=71)
    clean = ParagraphSet.from_tokens(torch.cat([prefixes, greedy_decode(neo, prefixes, 8)], 1), prefix_len=10)
    pert = prefixes.clone()
    pert[:, 4] = (pert[:, 4] + 11) % neo.vocab_size
    cont = greedy_decode(neo, prefixes, 8)
    cont[:, 3:] = (cont[:, 3:] + 5) % neo.vocab_size  # the perturbed paragraph's continuation changes at index 3
    perturbed = ParagraphSet.from_tokens(torch.cat([pert, cont], 1), prefix_len=10)
    pairs = make_patch_pairs(clean, perturbed)
    assert [p.continuation_index for p in pairs] == [3, 3, 3] and pairs[0].corrupt_target == int(cont[0, 3])
    res = pair_activation_gradients(neo, pairs, kinds=("v", "z"), mlp_kinds=("post",), progress=False)
    expected = torch.zeros(neo.n_heads)
    for pair in pairs:
        def loss(logits, t=pair.corrupt_target):
            return -torch.log_softmax(logits[0, -1].float(), -1)[t]
        _, _, g = neo.capture(pair.corrupt[None], ["blocks.0.attn.hook_v"], loss_fn=loss)
        expected += g["blocks.0.attn.hook_v"][0, 4].abs().amax(-1).float() / len(pairs)
    torch.testing.assert_close(res.grid("perturbed", "perturbed_token", "v")[0], expected, rtol=1e-4, atol=1e-8)
    assert res.heads.shape == (2, 2, neo.n_layers, 2, neo.n_heads) and res.mlp.shape == (2, 2, neo.n_layers, 1)
    assert float(res.heads[0, 0].abs().sum()) > 0 and len(res.plot("z").data) == 4
    assert {"clean@perturbed_token", "perturbed@changed_token"} <= set(res.summary())
