"""Does ``bf16-mixed`` agree with ``fp32``? Every stage's headline output computed both ways on one
model, each compared with what the stage's own randomness (seeds, noise draws) or the choice of
paragraphs changes in fp32 alone, so that "agrees" means "moves less than a rerun would".

Stages and their measures (docs/precision.md has the tables and the verdicts):

- scan: per-paragraph EM agreement, memorized / non-memorized split agreement, Spearman of NLL,
  and the greedy check (bf16-mixed greedy decoding against its own teacher-forced EM).
- gradients: Jaccard of the top-0.1% weight masks and Spearman of the component ranking;
  reference: fp32 on the other half of the memorized paragraphs.
- heads: top-5 overlap of the combined head ranking; reference: fp32 on other paragraphs.
- head_ablation: top head and Spearman of the per-head EM drop; reference: other paragraphs.
- perturb: max difference of the EM-drop-per-position curve; reference: fp32 with another seed.
- noise: max difference of mean EM per (mask, scale) of the memorized set; reference: the spread
  over noise draws.
- tradeoff: ``MaskTradeoff.retain_at(25)`` per mask with its interval over seeds, both ways.
- localize: INJ recall of each localizer with its interval over seeds, both ways.

Resumable: each stage's result is written to ``--out`` as it finishes and skipped on a rerun.

    python benchmarks/precision_agreement.py [--model organism] [--stages scan gradients ...]
        [--out docs/measurements/precision-agreement-organism.json] [--table-from FILE]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable

STAGES = ("scan", "gradients", "heads", "head_ablation", "perturb", "noise", "tradeoff", "localize")
BF16 = "bf16-mixed"


def jaccard(a: dict, b: dict) -> float:
    inter = sum(int((a[n] & b[n]).sum()) for n in a)
    union = sum(int((a[n] | b[n]).sum()) for n in a)
    return inter / union if union else 1.0


def measure_scan(ctx: dict) -> dict:
    import memlens as ml
    from memlens.core.metrics import exact_match, greedy_decode
    from memlens.core.stats import spearman

    model, paras = ctx["model"], ctx["paras"]
    a, b = ctx["scan32"], ml.scan(model, paras, precision=BF16, progress=False)
    sa, sb = a.split_of(), b.split_of()
    n = min(ctx["args"].greedy_check, len(paras))
    sample = paras[:n]
    with model.using_precision(BF16):
        decoded = exact_match(greedy_decode(model, sample.prefixes, sample.continuation_len), sample.continuations)
    return {"n": len(paras), "em_agreement": float((a.em == b.em).float().mean()),
            "em_max_abs_diff": int((a.em - b.em).abs().max()),
            "split_agreement": sum(x == y for x, y in zip(sa, sb)) / len(sa),
            "memorized_fp32": int(sum(x == "memorized" for x in sa)), "memorized_bf16": int(sum(x == "memorized" for x in sb)),
            "nll_spearman": spearman(a.nll.tolist(), b.nll.tolist()),
            "nll_max_abs_diff": float((a.nll - b.nll).abs().max()),
            "greedy_check_bf16": {"n": n, "agree": int((decoded == b.em[:n]).sum())},
            "agrees": bool(sum(x == y for x, y in zip(sa, sb)) / len(sa) >= 0.98)}


def measure_gradients(ctx: dict) -> dict:
    import memlens as ml
    from memlens.core.stats import spearman

    model, mem = ctx["model"], ctx["mem"]
    k = min(ctx["args"].gradient_paragraphs, len(mem))
    half = k // 2

    def run(ps: Any, precision: str) -> Any:
        return ml.GradientMap(model, precision=precision, progress=False).run(ps)

    a, b = run(mem[:k], "fp32"), run(mem[:k], BF16)
    r1, r2 = run(mem[:half], "fp32"), run(mem[half:k], "fp32")
    fr = ctx["args"].fraction
    score = lambda g: g.to_dataframe()["score"].tolist()  # noqa: E731
    out = {"paragraphs": k, "mask_jaccard": jaccard(a.mask(fr), b.mask(fr)),
           "component_spearman": spearman(score(a), score(b)),
           "reference_mask_jaccard_other_paragraphs": jaccard(r1.mask(fr), r2.mask(fr)),
           "reference_component_spearman_other_paragraphs": spearman(score(r1), score(r2))}
    out["agrees"] = bool(out["mask_jaccard"] >= out["reference_mask_jaccard_other_paragraphs"]
                         and out["component_spearman"] >= out["reference_component_spearman_other_paragraphs"])
    return out


def measure_heads(ctx: dict) -> dict:
    import memlens as ml

    model, mem, non = ctx["model"], ctx["mem"], ctx["non"]
    k = min(ctx["args"].head_paragraphs, len(mem) // 2)

    def top5(ps: Any, precision: str) -> list:
        rep = ml.HeadLocalizer(model, precision=precision, progress=False).run(
            ps, non[:k], max_paragraphs=k, exact_top=ctx["args"].exact_top)
        return [tuple(x) for x in rep.top(5)[["layer", "head"]].values.tolist()]

    a, b, r = top5(mem[:k], "fp32"), top5(mem[:k], BF16), top5(mem[k: 2 * k], "fp32")
    out = {"paragraphs": k, "top5_fp32": a, "top5_bf16": b, "top5_overlap": len(set(a) & set(b)),
           "reference_top5_overlap_other_paragraphs": len(set(a) & set(r)), "top1_equal": a[0] == b[0]}
    out["agrees"] = bool(out["top5_overlap"] >= out["reference_top5_overlap_other_paragraphs"] and out["top1_equal"])
    return out


def measure_head_ablation(ctx: dict) -> dict:
    import memlens as ml
    from memlens.core.stats import spearman

    model, mem = ctx["model"], ctx["mem"]
    k = min(ctx["args"].head_paragraphs, len(mem) // 2)

    def run(ps: Any, precision: str) -> Any:
        return ml.HeadAblation(model, precision=precision, progress=False).run(ps)

    a, b, r = run(mem[:k], "fp32"), run(mem[:k], BF16), run(mem[k: 2 * k], "fp32")
    drops = lambda x: x.to_dataframe()["em_drop"].tolist()  # noqa: E731
    out = {"paragraphs": k, "top_head_fp32": list(a.top_head()), "top_head_bf16": list(b.top_head()),
           "drop_spearman": spearman(drops(a), drops(b)),
           "reference_drop_spearman_other_paragraphs": spearman(drops(a), drops(r))}
    out["agrees"] = bool(a.top_head() == b.top_head() and out["drop_spearman"] >= out["reference_drop_spearman_other_paragraphs"])
    return out


def measure_perturb(ctx: dict) -> dict:
    import memlens as ml

    model, mem = ctx["model"], ctx["mem"]
    k = min(ctx["args"].perturb_paragraphs, len(mem))

    def curve(precision: str, seed: int) -> list[float]:
        res = ml.PrefixPerturber(model, precision=precision, progress=False).run(mem[:k], n_samples=2, seed=seed)
        return res.per_position()["em_drop"].tolist()

    a, b, r = curve("fp32", 0), curve(BF16, 0), curve("fp32", 1)
    out = {"paragraphs": k, "mean_em_drop_fp32": sum(a) / len(a), "mean_em_drop_bf16": sum(b) / len(b),
           "curve_max_abs_diff": max(abs(x - y) for x, y in zip(a, b)),
           "reference_curve_max_abs_diff_other_seed": max(abs(x - y) for x, y in zip(a, r))}
    out["agrees"] = bool(out["curve_max_abs_diff"] <= out["reference_curve_max_abs_diff_other_seed"])
    return out


def measure_noise(ctx: dict) -> dict:
    import memlens as ml

    model, mem, non = ctx["model"], ctx["mem"], ctx["non"]
    k = min(16, len(mem))
    gmap = ml.GradientMap(model, progress=False).run(mem[:k])
    tuner = ml.SparseFineTuner(model, progress=False)
    masks = {"topk": gmap.mask(ctx["args"].fraction), "random": tuner.make_mask("random", ctx["args"].fraction, None).masks}
    scales = (0.0, 1.0, 2.0, 4.0)

    def means(precision: str) -> Any:
        res = ml.NoiseIntervention(model, precision=precision, progress=False).run(mem[:k], non[:k], masks, scales, draws=3)
        return res.means()

    a, b = means("fp32"), means(BF16)
    a, b = a[a["set"] == "memorized"], b[b["set"] == "memorized"]
    diff = float((a["em"].values - b["em"].values).__abs__().max())
    spread = float((a["em_max"] - a["em_min"]).max())
    return {"paragraphs": k, "scales": list(scales), "em_max_abs_diff": diff, "reference_draw_spread_max": spread,
            "agrees": bool(diff <= spread)}


def measure_tradeoff(ctx: dict) -> dict:
    import memlens as ml

    args, model, mem, non = ctx["args"], ctx["model"], ctx["mem"], ctx["non"]
    cfg = ml.RunConfig.paper(args.model)
    kw = cfg.unlearn.compare_kwargs()
    kw.pop("seed")
    kw["n_trials"] = min(args.trials, len(mem))
    out: dict[str, Any] = {"lrs": args.lrs, "steps": args.steps, "seeds": args.seeds, "trials": kw["n_trials"]}
    for precision in ("fp32", BF16):
        t0 = time.perf_counter()
        res = ml.mask_tradeoff(model, mem[: kw["n_trials"]], cfg.unlearn.retain_set(non), args.lrs, steps=args.steps,
                               seeds=args.seeds, progress=False, precision=precision, **kw)
        out[precision] = {"retain_at_25": res.retain_at(25.0), "seconds": round(time.perf_counter() - t0, 1)}
    verdicts = {}
    for mask, a in out["fp32"]["retain_at_25"].items():
        b = out[BF16]["retain_at_25"][mask]
        if a["retain_em"] != a["retain_em"] or b["retain_em"] != b["retain_em"]:  # NaN: never forgets to 25
            verdicts[mask] = (a["retain_em"] != a["retain_em"]) == (b["retain_em"] != b["retain_em"])
        else:
            verdicts[mask] = bool(b["ci_low"] <= a["ci_high"] and a["ci_low"] <= b["ci_high"])
    out["agrees_per_mask"] = verdicts
    out["agrees"] = all(verdicts.values())
    return out


def measure_localize(ctx: dict) -> dict:
    import memlens as ml

    args, model = ctx["args"], ctx["model"]
    out: dict[str, Any] = {"ratios": args.ratios, "seeds": args.seeds, "n_inject": args.n_inject}
    for precision in ("fp32", BF16):
        t0 = time.perf_counter()
        bench = ml.LocalizationBenchmark(model, precision=precision, progress=False)
        res = bench.run(localizers=args.localizers, ratios=args.ratios, seeds=args.seeds, n_paragraphs=args.n_inject,
                        del_natural=False)
        out[precision] = {"recall": {f"{r['localizer']}@{r['ratio']}": {k: r.get(k) for k in
                                     ("recall", "recall_ci_low", "recall_ci_high", "steps")} for r in res.table("neuron")},
                          "injection_success": res.summary()["injection_success"],
                          "seconds": round(time.perf_counter() - t0, 1)}
    verdicts = {}
    for key, a in out["fp32"]["recall"].items():
        b = out[BF16]["recall"][key]
        verdicts[key] = bool(b["recall_ci_low"] <= a["recall_ci_high"] and a["recall_ci_low"] <= b["recall_ci_high"])
    out["agrees_per_localizer"] = verdicts
    out["agrees"] = all(verdicts.values())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="organism")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--fraction", type=float, default=0.001)
    ap.add_argument("--greedy-check", type=int, default=32)
    ap.add_argument("--gradient-paragraphs", type=int, default=16)
    ap.add_argument("--head-paragraphs", type=int, default=8)
    ap.add_argument("--exact-top", type=int, default=0, help="heads patched exactly after the attribution screen (0: all)")
    ap.add_argument("--perturb-paragraphs", type=int, default=8)
    ap.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3, 1e-2])
    ap.add_argument("--steps", type=int, nargs="+", default=[10])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.01])
    ap.add_argument("--localizers", nargs="+", default=None)
    ap.add_argument("--n-inject", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--table-from", default=None)
    args = ap.parse_args()
    if args.table_from:
        print(markdown(json.loads(Path(args.table_from).read_text())))
        return
    warnings.simplefilter("ignore")
    import torch

    import memlens as ml
    from memlens.core.io import write_json_atomic

    if args.threads:
        torch.set_num_threads(args.threads)
    done: dict[str, Any] = {}
    if args.out and Path(args.out).is_file():
        done = json.loads(Path(args.out).read_text())
        if done.get("model") != args.model:
            raise SystemExit(f"{args.out} holds {done.get('model')!r}, not {args.model!r}")
    done.setdefault("model", args.model)
    done.setdefault("stages", {})
    model = ml.load_model(args.model, progress=False)
    paras = model.ground_truth.paragraph_set()
    scan32 = ml.scan(model, paras, progress=False)
    ctx = {"args": args, "model": model, "paras": paras, "scan32": scan32, "mem": scan32.memorized(),
           "non": scan32.non_memorized()}
    measures: dict[str, Callable[[dict], dict]] = {s: globals()[f"measure_{s}"] for s in STAGES}
    for stage in args.stages:
        if stage in done["stages"]:
            print(f"{stage}: done before", flush=True)
            continue
        t0 = time.perf_counter()
        result = measures[stage](ctx) | {"seconds": round(time.perf_counter() - t0, 1)}
        done["stages"][stage] = result
        print(stage, json.dumps(result, default=str), flush=True)
        if args.out:
            write_json_atomic(Path(args.out), done)
    print(markdown(done))


def markdown(done: dict) -> str:
    lines = [f"model: {done['model']}", "", "| stage | bf16-mixed vs fp32 | fp32's own spread | agrees |", "|---|---|---|---|"]
    fmt = {"scan": lambda r: (f"EM equal {r['em_agreement']:.3f}, split equal {r['split_agreement']:.3f} "
                              f"({r['memorized_fp32']} vs {r['memorized_bf16']} memorized), NLL Spearman "
                              f"{r['nll_spearman']:.4f}; greedy check {r['greedy_check_bf16']['agree']}/"
                              f"{r['greedy_check_bf16']['n']}", "deterministic"),
           "gradients": lambda r: (f"mask Jaccard {r['mask_jaccard']:.3f}, component Spearman {r['component_spearman']:.3f}",
                                   f"other paragraphs: {r['reference_mask_jaccard_other_paragraphs']:.3f}, "
                                   f"{r['reference_component_spearman_other_paragraphs']:.3f}"),
           "heads": lambda r: (f"top-5 overlap {r['top5_overlap']}/5, top-1 equal {r['top1_equal']}",
                               f"other paragraphs: {r['reference_top5_overlap_other_paragraphs']}/5"),
           "head_ablation": lambda r: (f"top head {r['top_head_fp32']} vs {r['top_head_bf16']}, drop Spearman "
                                       f"{r['drop_spearman']:.3f}",
                                       f"other paragraphs: {r['reference_drop_spearman_other_paragraphs']:.3f}"),
           "perturb": lambda r: (f"curve max diff {r['curve_max_abs_diff']:.2f} (mean drop {r['mean_em_drop_fp32']:.2f} vs "
                                 f"{r['mean_em_drop_bf16']:.2f})", f"other seed: {r['reference_curve_max_abs_diff_other_seed']:.2f}"),
           "noise": lambda r: (f"EM max diff {r['em_max_abs_diff']:.2f}", f"draw spread {r['reference_draw_spread_max']:.2f}"),
           "tradeoff": lambda r: ("; ".join(f"{m} {_ci(r[BF16]['retain_at_25'][m])}" for m in r["fp32"]["retain_at_25"]),
                                  "; ".join(f"{m} {_ci(v)}" for m, v in r["fp32"]["retain_at_25"].items())),
           "localize": lambda r: ("; ".join(f"{k} {_rc(v)}" for k, v in r[BF16]["recall"].items()),
                                  "; ".join(f"{k} {_rc(v)}" for k, v in r["fp32"]["recall"].items()))}
    for stage, r in done["stages"].items():
        a, b = fmt[stage](r)
        lines.append(f"| {stage} | {a} | {b} | {'yes' if r.get('agrees') else 'no' if 'agrees' in r else 'see table'} |")
    return "\n".join(lines)


def _rc(v: dict) -> str:
    return f"{v['recall']:.3f} [{v['recall_ci_low']:.3f}, {v['recall_ci_high']:.3f}]"


def _ci(v: dict) -> str:
    if v["retain_em"] != v["retain_em"]:
        return "never forgets to 25"
    return f"{v['retain_em']:.1f} [{v['ci_low']:.1f}, {v['ci_high']:.1f}]"


if __name__ == "__main__":
    main()
