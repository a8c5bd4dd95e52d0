"""Why top-k unlearning costs the retain set's EM on the organism (figures for docs/unlearning.md).

Unlearns each of a few memorized targets alone (the paper's objective, through the top-k mask, the
retain-aware selective mask and a random mask of the same size), then scores a pool of non-memorized paragraphs against the original model's greedy
continuations: the leading-token EM lost, the continuation positions whose top-1 token moved, and
the EM lost by the paragraph's smallest original top-1 margin (nats). A flip at a near-tie ends EM
there, so EM lost on the pool tracks its near-ties; the top-1 changes show how much the output
distribution really moved.

    python benchmarks/unlearn_retain.py [--size default] [--targets 4] [--pool 128]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

BINS = (0.0, 0.01, 0.05, 0.1, float("inf"))
MASKS = ("topk", "selective", "random")


def main() -> None:
    from memlens import HookedModel, ParagraphSet, greedy_decode, scan
    from memlens.core.metrics import teacher_forced_scores
    from memlens.analyses.unlearn import SparseFineTuner

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="default")
    ap.add_argument("--targets", type=int, default=4)
    ap.add_argument("--retain", type=int, default=16)
    ap.add_argument("--pool", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args()

    model = HookedModel.organism(size=args.size, progress=False)
    res = scan(model, model.ground_truth.paragraph_set(n_background=args.pool, n_held_out=0), progress=False)
    mem, non = res.memorized(), res.non_memorized()
    retain = non[: args.retain]
    pool = ParagraphSet.from_tokens(torch.cat([non.prefixes, greedy_decode(model, non.prefixes, non.continuation_len)], 1),
                                    prefix_len=non.prefix_len)
    original = teacher_forced_scores(model, pool.tokens, pool.prefix_len, predictions=True)
    top1_0, margin = original.top1, original.margin
    min_margin = margin.min(-1).values
    bins = [(lo, hi) for lo, hi in zip(BINS[:-1], BINS[1:])]
    in_bin = [(min_margin >= lo) & (min_margin < hi) for lo, hi in bins]
    ft = SparseFineTuner(model)
    out: dict = {"organism": args.size, "targets": args.targets, "retain": len(retain), "pool": len(pool),
                 "steps": args.steps, "lr": args.lr,
                 "pool_positions_margin_below": {str(t): round(float((margin < t).float().mean()), 4) for t in (0.01, 0.05, 0.1, 0.5)},
                 "pool_paragraphs_by_min_margin": {f"{lo}-{hi}": int(b.sum()) for (lo, hi), b in zip(bins, in_bin)}}
    t0 = time.perf_counter()
    for mask in MASKS:
        drops, flips, target, kept = [], [], [], []
        for i in range(args.targets):
            with ft.restored(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = ft.unlearn(mem[[i]], retain, mask=mask, steps=args.steps, lr=args.lr)
                after = teacher_forced_scores(model, pool.tokens, pool.prefix_len, predictions=True)
            target.append(r.mean("target"))
            kept.append(r.mean("retain"))
            drops.append(pool.continuation_len - after.em.float())
            flips.append((after.top1 != top1_0).sum(-1).float())
        drop, flip = torch.stack(drops).mean(0), torch.stack(flips).mean(0)
        out[mask] = {
            "target_em_after": round(sum(target) / len(target), 1),
            "retain_em_after": round(sum(kept) / len(kept), 1),
            "pool_em_drop": round(float(drop.mean()), 1),
            "pool_top1_changed_per_paragraph": round(float(flip.mean()), 2),
            "pool_em_drop_by_min_margin": {f"{lo}-{hi}": round(float(drop[b].mean()), 1) if b.any() else None
                                           for (lo, hi), b in zip(bins, in_bin)},
        }
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"{'mask':<8}{'target EM':>10}{'retain EM':>10}{'pool EM lost':>13}{'top-1 moved':>12}   EM lost by min margin (nats)")
    for mask in MASKS:
        m = out[mask]
        by = "  ".join(f"[{k}] {v}" for k, v in m["pool_em_drop_by_min_margin"].items())
        print(f"{mask:<8}{m['target_em_after']:>10}{m['retain_em_after']:>10}{m['pool_em_drop']:>13}"
              f"{m['pool_top1_changed_per_paragraph']:>12}   {by}")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
