"""Gradient maps on the organism: memorized vs non-memorized paragraphs (the paper's Fig. 4 and 9).

    MEMLENS_SIZE=tiny python examples/gradient_map.py
"""

import os

import memlens as ml

model = ml.HookedModel.organism(size=os.environ.get("MEMLENS_SIZE", "default"))
info = model.ground_truth
result = ml.scan(model, info.paragraph_set(n_background=64, n_held_out=32), progress=False)
mem, non = result.memorized(), result.non_memorized()
print(f"{len(mem)} memorized, {len(non)} non-memorized paragraphs")

gm = ml.GradientMap(model)
mem_map = gm.run(mem, progress=False, label="memorized")
non_map = gm.run(non[: max(len(mem), 8)], progress=False, label="non_memorized")
print("top components (memorized):\n", mem_map.top(5))
print("memorized vs non-memorized:", mem_map.compare(non_map).summary())

contrastive = gm.run(mem, contrast=non, progress=False)
mask = contrastive.mask(fraction=0.001)
print("top-0.1% mask:", sum(int(m.sum()) for m in mask.values()), "weights")

print(ml.profiles_by_em_range(model, result, progress=False).to_dataframe().to_string(index=False))
