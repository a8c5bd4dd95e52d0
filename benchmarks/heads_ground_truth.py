"""HeadLocalizer against the organism's causal ground truth (figures for docs/heads.md).

1. The default organism's memorized paragraphs: the head whose zero-ablation costs them the most
   EM, and where each kind of evidence ranks it; the head with the most negative rare-token
   Kendall tau, and whether the gradients point to it.
2. Paragraphs injected through one head of the organism (where injection succeeds): how often
   each evidence kind puts the injected head in its top 3.

    python benchmarks/heads_ground_truth.py [--size default] [--inject-size tiny]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def ablation_study(size: str) -> dict:
    from memlens import HookedModel, scan
    from memlens.analyses.head_ablation import head_ablation_em_drop
    from memlens.analyses.heads import HeadLocalizer

    model = HookedModel.organism(size=size, progress=False)
    res = scan(model, model.ground_truth.paragraph_set(n_background=64, n_held_out=0), progress=False)
    mem, non = res.memorized(), res.non_memorized()[:16]
    t0 = time.perf_counter()
    drop = head_ablation_em_drop(model, mem, progress=False)
    t_abl = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = HeadLocalizer(model).run(mem, non, progress=False)
    t_loc = time.perf_counter() - t0
    L, H = drop.top_head()
    tau = report.columns["rare_tau"]
    rl, rh = divmod(int(tau.argmin()), model.n_heads)
    top = report.top(5)[["layer", "head", "combined_rank"] + report.evidence].round(4)
    return {
        "organism": size, "memorized": len(mem), "ablation_seconds": round(t_abl, 1), "localize_seconds": round(t_loc, 1),
        "ablation_top_head": f"L{L}H{H}", "ablation_em_drop": round(drop.drop(L, H), 2),
        "ablation_em_drop_grid": drop.em_drop.round(decimals=2).tolist(),
        "ablation_top_head_ranks": report.where(L, H),
        "rare_attention_head": f"L{rl}H{rh}", "rare_tau": round(float(tau[rl, rh]), 3),
        "rare_token_tau": round(float(report.columns["rare_token_tau"][rl, rh]), 3),
        "rare_attention_head_ranks": report.where(rl, rh),
        "agreement_attribution_vs_exact": report.agreement, "notes": report.notes,
        "top5": top.to_dict(orient="records"),
    }


def injection_study(size: str, heads: list[tuple[int, int]]) -> dict:
    from memlens import HookedModel
    from memlens.analyses.heads import HeadLocalizer
    from memlens.core.model import preserved_weights
    from memlens.analyses.injection import inject

    model = HookedModel.organism(size=size, progress=False)
    targets = model.ground_truth.held_out[:4]
    rows = []
    for L, H in heads:
        with preserved_weights(model.tl_model):
            res = inject(model, targets, [(L, k, H) for k in ("W_Q", "W_K", "W_V", "W_O")], steps=400, lr=3e-3, progress=False)
            row = {"head": f"L{L}H{H}", "injected": f"{int((res.em_after >= 50).sum())}/{len(targets)}"}
            if res.success_rate == 1.0:
                report = HeadLocalizer(model).run(targets, progress=False)
                row["ranks"] = report.where(L, H)
            rows.append(row)
    done = [r for r in rows if "ranks" in r]
    kinds = list(done[0]["ranks"]) if done else []
    return {"organism": size, "sites": rows,
            "top3_rate": {k: f"{sum(r['ranks'][k] <= 3 for r in done)}/{len(done)}" for k in kinds}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="default")
    ap.add_argument("--inject-size", default="tiny")
    args = ap.parse_args()
    torch.manual_seed(0)
    out = {"ablation": ablation_study(args.size),
           "injection": injection_study(args.inject_size, [(0, 1), (0, 3), (1, 0), (1, 2)])}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
