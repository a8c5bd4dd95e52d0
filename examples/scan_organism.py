"""Scan the organism's paragraphs and compare EM with the known duplication counts.

    python examples/scan_organism.py            # default organism (built on first use)
    MEMLENS_SIZE=tiny python examples/scan_organism.py
"""

import os

import memlens as ml

model = ml.HookedModel.organism(size=os.environ.get("MEMLENS_SIZE", "default"))
info = model.ground_truth
result = ml.scan(model, info.paragraph_set())
df = result.to_dataframe()

print(result.summary())
print(df[df["group"] == "planted"].groupby("copies")["em"].agg(["mean", "min", "max"]))
print("memorized paragraphs:", result.memorized().ids)
