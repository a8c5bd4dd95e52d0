import pytest
import torch

from memlens import InputError, ParagraphSet, greedy_decode, scan
from memlens.core.metrics import exact_match
from memlens.analyses.perturb import PerturbationResult, PrefixPerturber
from memlens.testing import random_tokens


def recited(model, n, prefix_len=20, cont_len=20, seed=0):
    """Paragraphs whose continuation is the model's own greedy one (EM = cont_len)."""
    base = random_tokens(n, prefix_len, model.vocab_size, seed=seed)
    return ParagraphSet.from_tokens(torch.cat([base, greedy_decode(model, base, cont_len)], 1), prefix_len=prefix_len)


def greedy_em(model, res):
    """EM of real greedy decoding for every perturbed prefix of a sweep."""
    ps = res.paragraphs
    prefixes = ps.prefixes[res.index].clone()
    prefixes[torch.arange(len(res.index)), res.position] = res.token
    gen = greedy_decode(model, prefixes, ps.continuation_len)
    return exact_match(gen, ps.continuations[res.index])


def test_sweep_em_equals_real_greedy_decoding(any_model):
    ps = recited(any_model, 2)
    res = PrefixPerturber(any_model).sweep(ps, n_samples=2, seed=1, progress=False)
    assert len(res.em) == 2 * 20 * 2
    assert res.em.tolist() == greedy_em(any_model, res).tolist()
    assert res.base_em.tolist() == [20, 20]
    assert res.em.min() < 20  # some perturbation changes the continuation


def test_cache_reuse_equals_full_recompute(any_model):
    ps = recited(any_model, 2, seed=3)
    pert = PrefixPerturber(any_model, batch_size=3)
    a = pert.sweep(ps, n_samples=2, progress=False)
    b = pert.sweep(ps, n_samples=2, reuse_cache=False, progress=False)
    assert a.em.tolist() == b.em.tolist() and a.token.tolist() == b.token.tolist()
    torch.testing.assert_close(a.nll, b.nll, atol=1e-4, rtol=1e-4)


def test_strategies(neo):
    ps = recited(neo, 1, seed=5)
    pert = PrefixPerturber(neo)
    r = pert.sweep(ps, strategy="random", n_samples=3, progress=False)
    assert (r.token != ps.tokens[0, r.position]).all()
    sb = pert.sweep(ps, strategy="second_best", n_samples=2, progress=False)
    assert 0 not in sb.position.tolist()
    logits = neo(ps.tokens[:, :-1])[0]
    for row in sb.to_dataframe().itertuples():
        ranked = [t for t in logits[row.position - 1].argsort(descending=True).tolist() if t != row.original_token]
        assert row.token == ranked[row.sample]
    sim = pert.sweep(ps, strategy="similar", positions=[3], n_samples=1, progress=False)
    emb = neo.tl_model.W_E.detach()
    cos = torch.nn.functional.cosine_similarity(emb, emb[ps.tokens[0, 3]][None], dim=-1)
    cos[ps.tokens[0, 3]] = -2
    assert sim.token.tolist() == [int(cos.argmax())]
    const = pert.sweep(ps, strategy=lambda toks, p, s, g: 7, positions=[1, 2], n_samples=1, progress=False)
    assert const.token.tolist() == [7, 7] and const.strategy == "<lambda>"


def test_true_reference_on_a_non_recited_paragraph(neo):
    ps = ParagraphSet.from_tokens(random_tokens(1, 40, neo.vocab_size, seed=9), prefix_len=20)
    res = PrefixPerturber(neo).sweep(ps, reference="true", positions=[0, 5], progress=False)
    assert res.base_em.tolist() == scan(neo, ps, progress=False).em.tolist()


def test_worst_and_perturbed_paragraphs(neo):
    ps = recited(neo, 3, seed=11)
    pert = PrefixPerturber(neo)
    res = pert.sweep(ps, n_samples=2, progress=False)
    worst = res.worst()
    assert worst["paragraph"].tolist() == ps.ids
    for row in worst.itertuples():
        assert row.em == int(res.em[res.index == ps.index_of(row.paragraph)].min())
    edited = pert.perturbed_paragraphs(ps, result=res)
    assert len(edited) == 3 and edited.metadata["original"] == ps.ids
    diff = (edited.prefixes != ps.prefixes).sum(dim=1)
    assert diff.tolist() == [1, 1, 1]
    assert scan(neo, edited, progress=False).em.tolist() == [20, 20, 20]  # its own greedy continuation


def test_results_roundtrip_and_views(neo, tmp_path):
    ps = recited(neo, 2, seed=13)
    res = PrefixPerturber(neo).sweep(ps, positions=[0, 4, 9], n_samples=2, progress=False)
    df = res.to_dataframe()
    assert list(df.columns[:7]) == ["paragraph", "position", "sample", "token", "em", "nll", "em_drop"]
    assert len(df) == 12 and set(df["position"]) == {0, 4, 9}
    res.save(tmp_path / "p.safetensors")
    back = PerturbationResult.load(tmp_path / "p.safetensors")
    assert back.em.tolist() == res.em.tolist() and torch.allclose(back.nll, res.nll)
    html = res.token_view(neo, 0)
    assert html.count("<span") == 21 and "</script>" not in html
    assert len(res.plot().data) == 1 and len(res.per_position()) == 3


def test_token_view_escapes_html(neo):
    ps = recited(neo, 1, seed=2)
    res = PrefixPerturber(neo).sweep(ps, positions=[0], progress=False)

    class Evil:
        def to_str_tokens(self, toks):
            return ["</script><b>"] * len(toks)

        def to_string(self, toks):
            return "<i>"

    html = res.token_view(Evil(), 0)
    assert "</script>" not in html and "&lt;/script&gt;" in html and "<i>" not in html


def test_bad_input(neo):
    ps = recited(neo, 1)
    pert = PrefixPerturber(neo)
    with pytest.raises(InputError, match=r"positions \[25\] out of range"):
        pert.sweep(ps, positions=[25])
    with pytest.raises(InputError, match="n_samples must be >= 1"):
        pert.sweep(ps, n_samples=0)
    with pytest.raises(InputError, match="empty"):
        pert.sweep(ps[[]])
    with pytest.raises(InputError, match="unknown strategy"):
        pert.sweep(ps, strategy="worst")
    with pytest.raises(InputError, match="outside the vocabulary"):
        pert.sweep(ps, strategy=lambda t, p, s, g: 10**6, positions=[0], progress=False)


def test_the_official_codes_perturbation_options(neo):
    """skip_position_0 leaves position 0 alone; allow_original lets the draw be the original token
    (over enough draws it is, at rate ~1/V); ties of the worst EM go to the earliest position."""
    ps = recited(neo, 2, seed=17)
    pert = PrefixPerturber(neo)
    res = pert.sweep(ps, n_samples=2, skip_position_0=True, progress=False)
    assert set(res.position.tolist()) == set(range(1, 20))
    assert res.provenance.config["skip_position_0"] is True
    assert torch.isnan(res.paragraph_drops(0)[0]) and not torch.isnan(res.paragraph_drops(0)[1:]).any()
    # allow_original: with a vocabulary of 512 and 2 x 20 x 64 draws, the original shows up
    many = pert.sweep(ps, n_samples=64, allow_original=True, progress=False).to_dataframe()
    same = many[many["token"] == many["original_token"]]
    assert len(same) > 0 and (same["em_drop"] == 0).all()
    never = pert.sweep(ps, n_samples=64, progress=False).to_dataframe()
    assert (never["token"] != never["original_token"]).all()
    # ties: the earliest position among the lowest EM, whatever the NLL says
    df = res.to_dataframe()
    for pid, w in zip(res.worst("earliest")["paragraph"], res.worst("earliest").itertuples()):
        rows = df[df["paragraph"] == pid]
        lowest = rows[rows["em"] == rows["em"].min()]
        assert w.position == lowest["position"].min()


def test_cumulative_perturbation_replaces_every_position_up_to_p(neo):
    """Row p replaces positions first..p with one random prefix per paragraph and sample: its EM
    equals greedy decoding after that hand-made prefix."""
    ps = recited(neo, 2, seed=19)
    pert = PrefixPerturber(neo, batch_size=8)
    res = pert.sweep(ps, strategy="cumulative", n_samples=2, skip_position_0=True, seed=3, progress=False)
    df = res.to_dataframe()
    for i in range(2):
        for s in range(2):
            rows = df[(df["paragraph"] == ps.ids[i]) & (df["sample"] == s)].sort_values("position")
            drawn = torch.tensor(rows["token"].tolist())  # the drawn prefix, positions 1..19
            for p in (3, 12):
                prefix = res.paragraphs.prefixes[i].clone()
                prefix[1 : p + 1] = drawn[: p]
                out = greedy_decode(neo, prefix[None], 20)[0]
                cont = res.paragraphs.continuations[i]
                em = int((out == cont).long().cumprod(0).sum())
                assert int(rows[rows["position"] == p]["em"].iloc[0]) == em
    # replacing more positions cannot be undone: the mean EM drop grows with p (on average)
    pp = res.per_position()
    assert pp["em_drop"].iloc[-5:].mean() >= pp["em_drop"].iloc[:5].mean()
    with pytest.raises(InputError, match="single-token"):
        pert.perturbed_paragraphs(ps, result=res)


def test_comparison_of_two_sweeps(neo, tmp_path):
    """compare() is a Result: its means equal each sweep's, its interval covers the paragraph
    means, its table has both sets' positions, and it saves and loads."""
    from memlens.analyses.perturb import PerturbationComparison

    pp = PrefixPerturber(neo)
    a = pp.sweep(recited(neo, 3, seed=31), positions=[2, 6], n_samples=2, progress=False)
    b = pp.sweep(recited(neo, 2, seed=32), positions=[1, 6, 8], n_samples=1, progress=False)
    cmp = a.compare(b, labels=("first", "second"))
    s = cmp.summary()
    assert s["mean_em_drop"] == pytest.approx(a.mean_em_drop()) and s["mean_em_drop_other"] == pytest.approx(b.mean_em_drop())
    assert s["difference"] == pytest.approx(a.mean_em_drop() - b.mean_em_drop())
    assert (s["n_paragraphs"], s["n_paragraphs_other"]) == (3, 2) and cmp["n_paragraphs"] == 3
    per_paragraph = a.to_dataframe().groupby("paragraph")["em_drop"].mean()
    lo, hi = s["ci95_paragraph_mean"]
    assert per_paragraph.min() - 1e-9 <= lo <= hi <= per_paragraph.max() + 1e-9
    df = cmp.to_dataframe()
    assert df[df["set"] == "first"]["position"].tolist() == [2, 6]
    assert df[df["set"] == "second"]["position"].tolist() == [1, 6, 8]
    back = PerturbationComparison.load(cmp.save(tmp_path / "cmp.safetensors"))
    assert back.labels == ("first", "second") and back.summary() == s
    assert len(cmp.plot().data) == 2 and len(cmp.plot_distribution().data) == 2
