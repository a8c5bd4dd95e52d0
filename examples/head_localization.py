"""Find the organism's memorization head: every kind of evidence in one table, checked against
zero-ablation, with circuitsvis views of the top head saved as an offline HTML page.

    MEMLENS_SIZE=tiny python examples/head_localization.py
"""

import os

import memlens as ml
from memlens.viz import standalone_page

model = ml.HookedModel.organism(size=os.environ.get("MEMLENS_SIZE", "default"))
info = model.ground_truth
scan = ml.scan(model, info.paragraph_set(n_background=64, n_held_out=0), progress=False)
mem, non = scan.memorized(), scan.non_memorized()[:16]

report = ml.HeadLocalizer(model).run(mem, non, progress=False)
print(report.top(5)[["layer", "head", "combined_rank", *report.evidence]].round(3))
print("attribution vs exact patching (Spearman over heads):", report.agreement)

ablation = ml.HeadAblation(model).run(mem, progress=False)
layer, head = ablation.top_head()
print(f"zero-ablating L{layer}H{head} costs {ablation.drop(layer, head):.1f} EM tokens;", report.evidence_text(layer, head))

best = report.top(1).iloc[0]
views = report.attention_view(model, mem, int(best["layer"]), int(best["head"]), unigram=ml.UnigramCounts.from_organism(info))
out = os.environ.get("MEMLENS_OUT", "top_head.html")
with open(out, "w") as f:
    f.write(standalone_page("memlens: top head", views))
print("views of the head most implicated in memorized paragraphs written to", out)
