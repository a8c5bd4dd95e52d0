"""Prefix perturbation on the organism: exact against greedy decoding, and the paper's finding."""

import torch

from memlens import greedy_decode, scan
from memlens.core.metrics import exact_match
from memlens.analyses.perturb import PrefixPerturber


def test_memorized_paragraphs_are_harder_to_derail(organism):
    info = organism.ground_truth
    res = scan(organism, info.paragraph_set(n_background=16, n_held_out=0), progress=False)
    mem, non = res.memorized()[:4], res.non_memorized()[:4]
    pert = PrefixPerturber(organism)
    positions = list(range(0, 50, 5))
    a = pert.sweep(mem, positions=positions, n_samples=2, progress=False)
    b = pert.sweep(non, positions=positions, n_samples=2, progress=False)
    assert a.mean_em_drop() < b.mean_em_drop()
    # exact: the sweep's EM equals real greedy decoding of every perturbed prefix
    prefixes = a.paragraphs.prefixes[a.index].clone()
    prefixes[torch.arange(len(a.index)), a.position] = a.token
    real = exact_match(greedy_decode(organism, prefixes, 50), a.paragraphs.continuations[a.index])
    assert a.em.tolist() == real.tolist()
