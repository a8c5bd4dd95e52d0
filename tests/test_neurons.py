"""MLP neurons: a neuron's weights and its activation hook are the same unit on every family, and
the helpers that pick and drop neurons do what they say."""

from __future__ import annotations

import pytest
import torch

from memlens import InputError, NeuronLayout
from memlens.core.neurons import random_neurons, top_neurons
from memlens.testing import random_model, random_tokens


@pytest.mark.parametrize("arch", ["gpt_neo", "gpt2", "llama"])
def test_dropping_a_neuron_equals_zeroing_its_output_weights(arch):
    """Zeroing neurons' activations through the hook gives the same logits as zeroing their slice
    of the output weight; the input-weight mask covers every W_in parameter (gate and up)."""
    model = random_model(arch, seed=3)
    layout = NeuronLayout(model)
    neurons = random_neurons(layout.n_layers, layout.d_mlp, 0.1, seed=1)
    tokens = random_tokens(2, 12, model.vocab_size, seed=0)
    with layout.dropped(neurons):
        dropped = model(tokens).detach()
    masks = layout.weight_mask(neurons)
    out_params = {s.param_name: s for layer in layout.slices for s in layer if s.role == "out"}
    saved = {n: s.param.detach().clone() for n, s in out_params.items()}
    try:
        with torch.no_grad():
            for n, s in out_params.items():
                s.param.masked_fill_(masks[n], 0.0)
        zeroed = model(tokens).detach()
    finally:
        with torch.no_grad():
            for n, s in out_params.items():
                s.param.copy_(saved[n])
    torch.testing.assert_close(dropped, zeroed, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(dropped, model(tokens).detach(), atol=1e-4)  # the drop did something
    n_in = sum(1 for s in layout.slices[0] if s.role == "in")
    assert n_in == (2 if arch == "llama" else 1)
    per_neuron = sum(int(m.sum()) for m in masks.values()) // int(neurons.sum())
    assert per_neuron == layout.weights_per_neuron == (n_in + 1) * model.d_model


def test_neuron_scores_from_weight_scores():
    model = random_model("gpt_neo", seed=4)
    layout = NeuronLayout(model)
    scores = {s.param_name: torch.zeros_like(s.param) for layer in layout.slices for s in layer}
    target = layout.slices[1][0]  # layer 1, W_in
    scores[target.param_name].select(target.axis, 7).fill_(3.0)
    scores[target.param_name].select(target.axis, 7).view(-1)[0] = 5.0
    per = layout.per_neuron(scores, "max")
    assert per[1, 7] == 5.0 and float(per.sum()) == 5.0
    assert layout.per_neuron(scores, "sum")[1, 7] == pytest.approx(3.0 * (model.d_model - 1) + 5.0)


def test_random_and_top_neurons():
    picked = random_neurons(3, 100, 0.05, seed=0)
    assert picked.sum(1).tolist() == [5, 5, 5] and not torch.equal(picked, random_neurons(3, 100, 0.05, seed=1))
    assert torch.equal(picked, random_neurons(3, 100, 0.05, seed=0))
    scores = torch.arange(12, dtype=torch.float).view(2, 6)
    scores[0, 0] = float("nan")
    top = top_neurons(scores, torch.tensor([2, 1]))
    assert top[0].nonzero().flatten().tolist() == [4, 5] and top[1].nonzero().flatten().tolist() == [5]
    for bad in (0.0, 1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(InputError, match=r"ratio must be in \(0, 1\)"):
            random_neurons(2, 10, bad, seed=0)
    layout = NeuronLayout(random_model("gpt_neo"))
    with pytest.raises(InputError, match="layers x MLP width"):
        layout.weight_mask(torch.zeros(3, 3, dtype=torch.bool))
