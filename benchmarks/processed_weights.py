"""Raw against processed weights (figures for docs/paper-fidelity.md): how far the top-0.1% masks
and the gradient maps' layer profiles move when the weights are differentiated as the paper's code
did (TransformerLens's default processing: LayerNorm folded, writing weights centred).

For one organism: the NLL gradient map of the memorized paragraphs (and of the non-memorized ones)
on the raw and on the processed weights; the Jaccard overlap of their top-0.1% masks (global, the
unlearning mask), the layer profile (share of the map per layer) of each, and the memorized vs
non-memorized contrast (the paper's Fig. 4 finding: memorized gradients are larger in lower
layers) under both.

    python benchmarks/processed_weights.py [--model organism] [--paragraphs 50] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings


def jaccard(a: dict, b: dict) -> float:
    """|A and B| / |A or B| of two masks (dicts of boolean tensors over the same parameters)."""
    inter = sum(int((a[n] & b[n]).sum()) for n in a)
    union = sum(int((a[n] | b[n]).sum()) for n in a)
    return inter / union if union else float("nan")


def main() -> None:
    from memlens import GradientMap, load_model, scan

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="organism")
    ap.add_argument("--paragraphs", type=int, default=50)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    warnings.simplefilter("ignore")

    models = {"raw": load_model(args.model, progress=False)}
    models["processed"] = load_model(args.model, progress=False, weights="processed")
    res = scan(models["raw"], models["raw"].ground_truth.paragraph_set(), progress=False)
    sets = {"memorized": res.memorized()[: args.paragraphs], "non_memorized": res.non_memorized()[: args.paragraphs]}
    out: dict = {"model": args.model, "paragraphs": {k: len(v) for k, v in sets.items()}, "maps": {}}
    maps = {}
    for w, model in models.items():
        for name, ps in sets.items():
            t0 = time.perf_counter()
            maps[w, name] = GradientMap(model, progress=False).run(ps, keep_weight_grads=True)
            out["maps"][f"{w}/{name}"] = {"seconds": round(time.perf_counter() - t0, 1),
                                          "layer_profile": [round(float(x), 4) for x in maps[w, name].layer_profile()]}
    for name in sets:
        for fraction in (0.001, 0.01):
            a = maps["raw", name].mask(fraction=fraction)
            b = maps["processed", name].mask(fraction=fraction)
            out.setdefault("jaccard", {})[f"{name}@{fraction:g}"] = round(jaccard(a, b), 4)
    for w in models:
        mem, non = maps[w, "memorized"].layer_profile(), maps[w, "non_memorized"].layer_profile()
        out.setdefault("memorized_minus_non_memorized", {})[w] = [round(float(x), 4) for x in (mem - non)]
    if args.out:
        from memlens.core.io import write_json_atomic

        write_json_atomic(args.out, out)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
