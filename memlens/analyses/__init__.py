"""The analyses of the paper, one module each (scan, gradient maps, heads, perturbation, patching,
unlearning, ...). They build on :mod:`memlens.core` and :mod:`memlens.viz`, never on the run layer."""
