"""Sparse unlearning on the organism (the paper's Fig. 5): fine-tune the top 0.1% of weights by
gradient, the top 0.1% relative to the retain set's sensitivity ("selective"), a random 0.1%, or
all weights, and compare what is forgotten. Strictly sparse and reversible: the model is restored
after every run.

    MEMLENS_SIZE=tiny python examples/sparse_unlearning.py
"""

import os

import memlens as ml

model = ml.HookedModel.organism(size=os.environ.get("MEMLENS_SIZE", "default"))
scan = ml.scan(model, model.ground_truth.paragraph_set(n_background=32, n_held_out=0), progress=False)
mem, non = scan.memorized(), scan.non_memorized()[:16]

ft = ml.SparseFineTuner(model)
with ft.restored():
    res = ft.unlearn(mem[0], retain=non, mask="topk", fraction=0.001, steps=10, lr=1e-3, other_memorized=mem[1:])
    print(f"changed {res.weights_changed} of a {res.mask_size}-weight mask:", res.summary())

table = ml.compare_masks(model, mem[:3], non, other_memorized=mem, masks=("all", "topk", "selective", "random"),
                      progress=False)
print("mean EM after unlearning each memorized target alone:")
print(table.to_dataframe()[["mask", "mask_size", "target_em_after", "other_memorized_em_after", "retain_em_after",
             "retain_top1_changed"]].round(1))
