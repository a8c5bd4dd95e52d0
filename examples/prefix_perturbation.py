"""Prefix perturbation on the organism: are memorized paragraphs harder to derail (the paper's
Fig. 3)? Replace every prefix position by random tokens, compare mean EM drops, and build the
perturbed paragraphs used by the editing objective.

    MEMLENS_SIZE=tiny python examples/prefix_perturbation.py
"""

import os

import memlens as ml

model = ml.HookedModel.organism(size=os.environ.get("MEMLENS_SIZE", "default"))
info = model.ground_truth
scan = ml.scan(model, info.paragraph_set(n_background=64, n_held_out=0), progress=False)
mem, non = scan.memorized()[:8], scan.non_memorized()[:8]

pert = ml.PrefixPerturber(model)
a = pert.run(mem, strategy="random", n_samples=4, seed=0, progress=False)
b = pert.run(non, strategy="random", n_samples=4, seed=0, progress=False)
print(f"mean EM drop per perturbed position: memorized {a.mean_em_drop():.2f} vs non-memorized {b.mean_em_drop():.2f}")
print("most fragile positions (memorized):\n", a.per_position().sort_values("em_drop", ascending=False).head(5))
print("worst single perturbation per memorized paragraph:\n", a.worst()[["paragraph", "position", "token", "em"]])

edited = pert.perturbed_paragraphs(mem, result=a)
print("perturbed paragraphs for editing:", edited)
