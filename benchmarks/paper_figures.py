"""The figures of the paper that memlens added as library calls, measured on one organism (for
docs/paper-figures.md): Fig. 2/8 (EM and NLL against duplication), the min-K% NLL column,
Fig. 9 (gradients by EM range, with the code's per-kind and attention/MLP statistics), the
gradient-similarity map, and the noise intervention on top-k / selective / random masks (at
memlens's noise grid and the code's), with the spread over noise draws.

    python benchmarks/paper_figures.py [--model organism] [--draws 3] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings


def main() -> None:
    import memlens as ml
    from memlens.core.defaults import NOISE_SCALES, PAPER_NOISE_SCALES
    from memlens.core.io import write_json_atomic

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="organism")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--max-paragraphs", type=int, default=32)
    ap.add_argument("--targets", type=int, default=4, help="memorized paragraphs noised (the change set)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    out: dict = {"model": args.model}

    def save() -> None:
        if args.out:
            write_json_atomic(args.out, out)

    model = ml.load_model(args.model, progress=False)
    t0 = time.perf_counter()
    res = ml.scan(model, model.ground_truth.paragraph_set(), progress=False)
    mem, non = res.memorized(), res.non_memorized()
    df = res.to_dataframe()
    out["scan"] = {"seconds": round(time.perf_counter() - t0, 1), "memorized": len(mem), "non_memorized": len(non),
                   "min_k": res.min_k, "mean_min_k_nll": df.groupby("split")["min_k_nll"].mean().round(3).to_dict(),
                   "mean_nll": df.groupby("split")["nll"].mean().round(3).to_dict()}
    out["duplication"] = res.duplication().summary()
    save()

    t0 = time.perf_counter()
    prof = ml.profiles_by_em_range(model, res, max_per_bin=args.max_paragraphs, progress=False)
    keys = ("em_range", "n", "total", "score_var", "W_in_sum", "W_out_sum", "W_Q_sum", "W_Q_var", "W_in_var")
    out["fig9"] = {"seconds": round(time.perf_counter() - t0, 1),
                   "rows": [{k: r[k] for k in keys if k in r}
                            | {"attn_share_layer0": r["attn_0"] / max(1e-30, sum(v for k2, v in r.items() if k2.startswith(("attn_", "mlp_"))))}
                            for r in prof.rows]}
    save()

    t0 = time.perf_counter()
    sim = ml.GradientSimilarity(model).run(mem[: args.max_paragraphs], non[: args.max_paragraphs], progress=False)
    out["similarity"] = sim.summary() | {"seconds": round(time.perf_counter() - t0, 1),
                                         "by_layer": sim.by_layer().round(3).to_dict(orient="index")}
    save()

    targets, retain = mem[: args.targets], non[:16]
    gmap = ml.GradientMap(model).run(targets, contrast=retain, progress=False)
    tuner = ml.SparseFineTuner(model, progress=False)
    masks = {k: tuner.make_mask(k, 0.001, gmap, seed=0, sensitivity=tuner.retain_sensitivity(retain) if k == "selective" else None)
             for k in ("topk", "selective", "random")}
    out["noise"] = []
    for grid, scales, reference in (("memlens", NOISE_SCALES, "greedy"), ("paper", PAPER_NOISE_SCALES, "true")):
        t0 = time.perf_counter()
        noise = ml.NoiseIntervention(model).run(targets, retain, masks, scales, draws=args.draws, reference=reference,
                                                progress=False)
        out["noise"].append({"grid": grid, "reference": reference, "seconds": round(time.perf_counter() - t0, 1),
                             "mask_sizes": noise.mask_sizes, "means": noise.means().round(3).to_dict(orient="records")})
        save()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
