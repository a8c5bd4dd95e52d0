"""NoiseIntervention on a tiny random model: exact restoration, the noise's size and place, the
result's table, and bad input."""

from __future__ import annotations

import pytest
import torch

from memlens import InputError, ParagraphSet
from memlens.analyses.noise import NoiseIntervention, NoiseResult, noised
from memlens.analyses.unlearn import SparseFineTuner
from memlens.core.metrics import greedy_decode
from memlens.testing import random_tokens


@pytest.fixture(scope="module")
def sets(neo):
    prefixes = random_tokens(5, 12, neo.vocab_size, seed=41)
    recited = ParagraphSet.from_tokens(torch.cat([prefixes, greedy_decode(neo, prefixes, 8)], 1), prefix_len=12)
    other = ParagraphSet.from_tokens(random_tokens(4, 20, neo.vocab_size, seed=42), prefix_len=12)
    return recited, other


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.tl_model.named_parameters()}


def test_weights_are_restored_bit_for_bit(neo, sets, tmp_path):
    mem, non = sets
    ft = SparseFineTuner(neo)
    masks = {"random": ft.make_mask("random", 0.05, None, seed=1), "all": ft.make_mask("all", 1.0, None)}
    before = _weights(neo)
    res = NoiseIntervention(neo, batch_size=2).run(mem, non, masks, scales=[0.0, 0.5, 4.0], draws=2, progress=False)
    after = _weights(neo)
    assert all(torch.equal(before[n], after[n]) for n in before)
    df = res.to_dataframe()
    assert len(df) == 2 * 3 * 2 * (len(mem) + len(non))
    # no noise: the greedy reference is recited in full; heavy noise on every weight breaks it
    zero = df[(df["scale"] == 0.0) & (df["set"] == "memorized")]
    assert (zero["em"] == 8).all()
    big = res.means().query("mask == 'all' and scale == 4.0 and set == 'memorized'")["em"].iloc[0]
    assert big < 8
    assert res.mask_sizes["all"] == masks["all"].n_selected
    back = NoiseResult.load(res.save(tmp_path / "noise.safetensors"))
    assert back.rows == res.rows and back.summary() == res.summary()
    assert len(res.plot().data) == 2 * 2 * 2  # masks x sets x (EM, NLL)


def test_noise_lands_on_the_mask_with_the_parameters_std(neo):
    ft = SparseFineTuner(neo)
    mask = ft.make_mask("random", 0.2, None, seed=3).masks
    params = ft.params
    before = {n: p.detach().clone() for n, p in params.items()}
    with noised(params, mask, 0.5, "parameter_std", torch.Generator().manual_seed(0)):
        deltas = {n: params[n].detach() - before[n] for n in params}
        for n, d in deltas.items():
            assert torch.count_nonzero(d[~mask[n]]) == 0  # nothing outside the mask moves
        name = max(mask, key=lambda n: int(mask[n].sum()))
        d = deltas[name][mask[name]]
        assert d.std().item() == pytest.approx(0.5 * before[name].std().item(), rel=0.15)
    assert all(torch.equal(params[n].detach(), before[n]) for n in params)


def test_restored_after_an_error_inside(neo):
    ft = SparseFineTuner(neo)
    mask = ft.make_mask("all", 1.0, None).masks
    before = {n: p.detach().clone() for n, p in ft.params.items()}
    with pytest.raises(RuntimeError, match="boom"):
        with noised(ft.params, mask, 1.0, "absolute", torch.Generator().manual_seed(0)):
            raise RuntimeError("boom")
    assert all(torch.equal(p.detach(), before[n]) for n, p in ft.params.items())


def test_bad_input(neo, sets):
    mem, non = sets
    ni = NoiseIntervention(neo)
    good = {"all": SparseFineTuner(neo).make_mask("all", 1.0, None)}
    with pytest.raises(InputError, match="scales"):
        ni.run(mem, non, good, scales=[-1.0], progress=False)
    with pytest.raises(InputError, match="draws"):
        ni.run(mem, non, good, draws=0, progress=False)
    with pytest.raises(InputError, match="relative_to"):
        ni.run(mem, non, good, relative_to="layer", progress=False)
    with pytest.raises(InputError, match="does not have"):
        ni.run(mem, non, {"x": {"nope.weight": torch.ones(2, dtype=torch.bool)}}, progress=False)
    with pytest.raises(InputError, match="at least one mask"):
        ni.run(mem, non, {}, progress=False)
