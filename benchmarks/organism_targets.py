"""Measure the organism against its targets: build and cache-load time, memorization by
duplication count, seen-once and unseen paragraphs, NLL vs the uniform baseline, and the success
rate of injection per kind of site.

    python benchmarks/organism_targets.py [--size default] [--cache-dir DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import memlens as ml
from memlens.core.model import preserved_weights
from memlens.analyses.injection import inject
from memlens.organism import build, organism_path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--rebuild", action="store_true", help="time a fresh build (deletes the cached organism)")
    ap.add_argument("--inject-steps", type=int, default=400)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    out: dict = {}
    if args.rebuild:
        t0 = time.perf_counter()
        build(args.size, args.seed, args.cache_dir, force=True)
        out["build_seconds"] = round(time.perf_counter() - t0, 1)
    else:
        build(args.size, args.seed, args.cache_dir)
    t0 = time.perf_counter()
    model = ml.HookedModel.organism(size=args.size, seed=args.seed, cache_dir=args.cache_dir)
    out["cache_load_seconds"] = round(time.perf_counter() - t0, 2)
    info = model.ground_truth
    out["organism"] = info.summary()
    out["path"] = str(organism_path(args.size, args.seed, args.cache_dir))

    paras = ml.ParagraphSet.concat([info.planted, info.background[:512], info.held_out])
    res = ml.scan(model, paras, progress=False)
    gt = info.evaluate(res)
    out["ground_truth"] = gt
    planted = res.to_dataframe().query("group == 'planted'")
    hi = planted[planted["copies"] >= 64]
    out["targets"] = {
        "memorized_share_copies_ge_64": round(float((hi["em"] == 50).mean()), 3),
        "background_share_em_ge_30": gt["background"]["frac_em_ge_30"],
        "held_out_share_em_ge_30": gt["held_out"]["frac_em_ge_30"],
        "spearman_em_vs_copies": gt["spearman_em_vs_copies"],
        "held_out_nll": gt["held_out"]["mean_nll"],
        "uniform_nll": round(math.log(model.vocab_size), 3),
    }

    L = model.n_layers - 1
    sites = {
        "one head (W_Q,W_K,W_V,W_O of L1H0)": [(1, k, 0) for k in ("W_Q", "W_K", "W_V", "W_O")],
        f"one MLP (W_in,W_out of layer {L})": [(L, "W_in"), (L, "W_out")],
        "one whole layer (layer 1)": [(1, k, h) for k in ("W_Q", "W_K", "W_V", "W_O") for h in range(model.n_heads)]
        + [(1, "W_in"), (1, "W_out")],
    }
    targets = info.held_out[:4]
    out["injection"] = {}
    for name, comps in sites.items():
        t0 = time.perf_counter()
        with preserved_weights(model.tl_model):
            r = inject(model, targets, comps, steps=args.inject_steps, lr=3e-3, progress=False)
        out["injection"][name] = {"success_rate": r.success_rate, "em_after": r.em_after.tolist(),
                                  "steps": r.steps, "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
