"""Hook points and the component registry on the organism: read one head's weights, capture an
activation and its gradient, and measure what zero-ablating each head of layer 1 costs in EM.

    MEMLENS_SIZE=tiny python examples/hooks_and_components.py
"""

import os

import torch

import memlens as ml

model = ml.HookedModel.organism(size=os.environ.get("MEMLENS_SIZE", "default"))
mem = ml.scan(model, model.ground_truth.planted, progress=False).memorized()
print(f"{len(mem)} memorized planted paragraphs")

w_v = model.components[(1, "W_V", 0)]
print("layer 1 head 0 W_V:", [tuple(w.shape) for w in w_v.weights()], w_v.slices[0].param_name)


def continuation_nll(logits: torch.Tensor) -> torch.Tensor:
    P = mem.prefix_len
    logp = logits[:, P - 1 : -1].log_softmax(-1)
    return -logp.gather(-1, mem.tokens[:, P:, None]).mean()


loss, acts, grads = model.capture(mem.tokens, ["blocks.1.attn.hook_v"], loss_fn=continuation_nll)
print("loss", float(loss), "| dL/dv max per head:", grads["blocks.1.attn.hook_v"].abs().amax(dim=(0, 1, 3)).tolist())

base = ml.teacher_forced_scores(model, mem.tokens, mem.prefix_len).em.float().mean()
for head in range(model.n_heads):
    with model.ablate("blocks.1.attn.hook_z", head=head):
        em = ml.teacher_forced_scores(model, mem.tokens, mem.prefix_len).em.float().mean()
    print(f"ablate L1H{head}: mean EM {base:.1f} -> {em:.1f}")
