"""Does an unlearned paragraph stay unlearned? Unlearn groups of memorized paragraphs through all
weights and through the top 0.1% by gradient, then relearn half of each group, quantize to int4,
try other prefixes and noise, and read how much came back (docs/resurfacing.md). bf16-mixed
compute (docs/precision.md) makes the same call ~2-4x faster on a real model.

    MEMLENS_SIZE=tiny python examples/resurfacing_audit.py
"""

import os

import memlens as ml

model = ml.HookedModel.organism(size=os.environ.get("MEMLENS_SIZE", "default"))
scan = ml.scan(model, model.ground_truth.paragraph_set(), progress=False)
mem, non = scan.memorized(), scan.non_memorized()

design = ml.ResurfacingSettings(relearn_steps=(5, 10), schemes=("int8-channel-sym", "int4-g128-asym"))
res = ml.ResurfacingAudit(model, progress=False).run(
    mem, non, masks=["all", "topk"], objectives=["paper"], n_trials=1, lr={"all": 1e-3, "topk": 1e-2},
    design=design, settings=ml.FineTuneSettings.paper_code(steps=10, weight_decay=0.0))
for row in res.headline():
    share = "-" if row["recovered"] != row["recovered"] else f"{row['recovered']:.2f}"
    print(f"{row['mask']:>4} {row['attack']:<17} {row['variant']:<15} EM {row['em_before']:.0f} -> "
          f"{row['em_unlearned']:.1f} -> {row['em_after']:.1f} (recovered {share})")
unlearned = next(r for r in res.headline() if r["mask"] == "all" and r["attack"] == "none")
print(f"all weights unlearned the group from EM {unlearned['em_before']:.1f} to {unlearned['em_unlearned']:.1f}")
