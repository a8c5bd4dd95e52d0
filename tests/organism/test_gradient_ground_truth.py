"""GradientMap against the organism's ground truth."""


from memlens import ComponentKey, scan
from memlens.analyses.gradients import GradientMap
from memlens.analyses.injection import inject


def precision_at_k(result, sites: set[ComponentKey]) -> float:
    top = result.top(len(sites))
    found = {ComponentKey(int(r.layer), r.component, int(r.head)) for r in top.itertuples()}
    return len(found & sites) / len(sites)


def test_map_finds_an_injected_head(restored):
    """Paragraphs injected through one head's W_Q/W_K/W_V/W_O only: the map of those paragraphs
    puts that head's four matrices on top (precision at k=4)."""
    model = restored
    targets = model.ground_truth.held_out[:4]
    sites = [(0, k, 1) for k in ("W_Q", "W_K", "W_V", "W_O")]
    res = inject(model, targets, sites, steps=400, lr=3e-3, progress=False)
    assert res.success_rate == 1.0, res.em_after.tolist()
    gmap = GradientMap(model).compute(targets, progress=False)
    assert precision_at_k(gmap, {model.components.key(*s) for s in sites}) >= 0.75


def test_memorized_paragraphs_have_smaller_gradients(organism):
    """The paper's first finding (Fig. 4): memorized paragraphs have smaller gradients."""
    info = organism.ground_truth
    res = scan(organism, info.paragraph_set(n_background=64, n_held_out=0), progress=False)
    mem, non = res.memorized(), res.non_memorized()
    assert len(mem) >= 4 and len(non) >= 16
    gm = GradientMap(organism)
    a = gm.compute(mem, progress=False)
    b = gm.compute(non[: len(mem) * 4], progress=False)
    cmp = a.compare(b).summary()
    first, second = cmp["labels"]
    assert cmp["total"][first] < cmp["total"][second]
    assert len(cmp["profile"][first]) == organism.n_layers and abs(sum(cmp["profile"][first]) - 1) < 1e-3
