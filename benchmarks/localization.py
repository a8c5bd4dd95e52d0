"""The localization benchmark (INJ / DEL) on an organism: every localizer's recall of the planted
neurons with its 95% interval over seeds, what dropping its neurons does, the whole run's time and
each localizer's share of it (figures for docs/localization.md).

Also, with ``--ig-baseline``, integrated gradients batched over its interpolation steps (one
forward/backward per paragraph and layer, memlens's) against one forward/backward per step (the
textbook loop), same numbers, and the ratio of times; with ``--tune``, the learned-mask
localizers' penalty grid on tuning seeds (not the benchmark's), which chose their defaults.

    python benchmarks/localization.py [--model organism] [--ratios 0.01 0.02 0.05] [--seeds 0 1 2]
        [--localizers ...] [--n-paragraphs 4] [--weight-ratios 0.01] [--out FILE.json]
    python benchmarks/localization.py --ig-baseline [--model organism]
    python benchmarks/localization.py --tune [--model organism-tiny] [--ratios 0.05] [--seeds 100 101]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="organism")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.01, 0.02, 0.05])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--localizers", nargs="*", default=None)
    ap.add_argument("--n-paragraphs", type=int, default=4)
    ap.add_argument("--weight-ratios", type=float, nargs="*", default=[])
    ap.add_argument("--settings", default="{}", help="JSON: constructor settings per localizer")
    ap.add_argument("--contrast-paragraphs", type=int, default=16)
    ap.add_argument("--del-paragraphs", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--precision", default=None, choices=["fp32", "bf16-mixed"],
                    help="compute precision (default: the model's, fp32); docs/precision.md")
    ap.add_argument("--fresh", action="store_true",
                    help="start a checkpoint made with other settings afresh instead of refusing it")
    ap.add_argument("--table-from", default=None, metavar="FILE",
                    help="only print the tables of a saved run (FILE.json), or of the blocks a running or interrupted "
                         "run has finished (its FILE.json.blocks checkpoint; with --out, also write them as a partial "
                         "measurement)")
    ap.add_argument("--ig-baseline", action="store_true")
    ap.add_argument("--tune", action="store_true")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    if args.table_from:
        return table_from(args.table_from, args.out)
    import memlens as ml

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        model = ml.load_model(args.model, progress=False)
    except ml.MemlensError as e:
        raise SystemExit(f"localization: error: {e}") from None
    if args.ig_baseline:
        return ig_baseline(model)
    if args.tune:
        return tune(model, args)
    t0 = time.perf_counter()
    if args.out:
        from memlens.core.io import check_output_file

        check_output_file(args.out, "--out")  # before hours of compute
    blocks = (args.out + ".blocks") if args.out else None
    res = ml.LocalizationBenchmark(model, progress=True, precision=args.precision).run(
        localizers=args.localizers, ratios=args.ratios, seeds=args.seeds, n_paragraphs=args.n_paragraphs,
        weight_ratios=args.weight_ratios, localizer_settings=json.loads(args.settings),
        contrast_paragraphs=args.contrast_paragraphs, del_paragraphs=args.del_paragraphs,
        checkpoint=blocks, fresh=args.fresh)
    total = time.perf_counter() - t0
    out = {"model": args.model, "total_seconds": round(total, 1), "summary": res.summary(), "rows": res.rows,
           "injections": res.injections, "settings": vars(args) | {"torch_threads": __import__("torch").get_num_threads()}}
    if args.out:
        from memlens.core.io import write_json_atomic

        write_json_atomic(args.out, out)
        Path(blocks).unlink(missing_ok=True)  # only once the output is safely written
    print(markdown(out))


def table_from(path: str, out_path: str | None) -> None:
    """Print the tables of a saved run, or of a checkpoint's finished blocks (and write those as a
    partial measurement JSON to ``out_path``)."""
    import memlens as ml

    try:
        if path.endswith(".blocks"):
            res = ml.LocalizationBenchmarkResult.from_checkpoint(path)
            cfg = res.provenance.config
            total = round(sum(res.seconds_by_localizer().values()), 1)
            out = {"model": cfg["identity"].get("model", ""), "total_seconds": total, "summary": res.summary(),
                   "rows": res.rows, "injections": res.injections,
                   "partial": {"blocks_done": cfg["blocks"], "pieces_done": cfg["pieces"],
                               "blocks_planned": cfg["planned"], "checkpoint": path},
                   "settings": cfg["identity"]}
        else:
            out = json.loads(Path(path).read_text())
            res = ml.LocalizationBenchmarkResult(rows=out["rows"], injections=out["injections"])
            out["summary"] = res.summary()
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"localization: error: --table-from {path}: {e}") from None
    except ml.MemlensError as e:
        raise SystemExit(f"localization: error: {e}") from None
    if "partial" in out:
        done, planned = out["partial"]["blocks_done"], out["partial"]["blocks_planned"]
        print(f"partial: {len(done)} finished blocks (level, ratio, seed) of {len(planned)} planned INJ blocks "
              f"and the natural-DEL ones: {done}; localizers finished in unfinished blocks (their rows are in the "
              f"tables, their injection is not): {out['partial']['pieces_done']}\n")
    if out_path and "partial" in out:
        from memlens.core.io import write_json_atomic

        write_json_atomic(out_path, out)
    print(markdown(out))


def markdown(out: dict) -> str:
    """INJ (recall with its interval, per layer, time), DEL on the model's own memorized
    paragraphs, the single-weight INJ, and each localizer's share of the whole run's time."""
    s = out["summary"]
    inj = s.get("injection", {})
    parts = sum(s["seconds"].values())
    total = max(parts, out["total_seconds"])
    resumed = f" (this process {out['total_seconds']} s; the rest resumed from the checkpoint)" \
        if parts > out["total_seconds"] * 1.01 else ""
    head = (f"injections recited every paragraph in {s['injection_success']:.0%} of (ratio, seed), in "
            f"{inj.get('steps', 0):.0f} steps on average; they changed the other memorized paragraphs' EM by "
            f"{inj.get('other_em_change', 0):+.1f} and the non-memorized NLL by {inj.get('non_memorized_nll_change', 0):+.3f}"
            if out["injections"] else "no injection record yet (a block's is saved when the block finishes)")
    lines = [f"{out['model']}: total {total:.1f} s{resumed}; {head}", "",
             "| localizer | ratio | seeds | INJ recall [95% CI over seeds] | recall per layer | seconds/run | steps/run |",
             "|---|---|---|---|---|---|---|"]

    def ci(r: dict, k: str, d: int) -> str:
        return f"{r[k]:.{d}f} [{r[k + '_ci_low']:.{d}f}, {r[k + '_ci_high']:.{d}f}]" if k in r and r[k] is not None else "-"

    for r in s["neuron"]:
        layers = " ".join(f"{x:.2f}" for x in r.get("layer_recall", []))
        gain = f" (last-window gain <= {r['loss_window_gain']:.2%})" if r.get("loss_window_gain") is not None else ""
        lines.append(f"| {r['localizer']} | {r['ratio']:g} | {r['n_seeds']} | {ci(r, 'recall', 3)} | {layers} | "
                     f"{r['seconds']:.1f} | {r.get('steps', 0):.0f}{gain} |")
    injected_del = [r for r in s["neuron"] if r.get("del_target_em_drop") is not None]
    if injected_del:
        lines += ["", "DEL on the injected paragraphs (each localizer's top ratio x d_mlp neurons per layer dropped):", "",
                  "| localizer | ratio | seeds | target EM drop | other memorized EM drop | non-memorized NLL change |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['localizer']} | {r['ratio']:g} | {r['n_seeds']} | {ci(r, 'del_target_em_drop', 1)} | "
                  f"{ci(r, 'del_other_em_drop', 1)} | {ci(r, 'del_non_memorized_nll_change', 3)} |" for r in injected_del]
    if "natural" in s:
        lines += ["", "DEL on the model's own memorized paragraphs (the top ratio x d_mlp neurons per layer dropped):", "",
                  "| localizer | ratio | seeds | target EM drop | other memorized EM drop | non-memorized NLL change |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['localizer']} | {r['ratio']:g} | {r['n_seeds']} | {ci(r, 'del_target_em_drop', 1)} | {ci(r, 'del_other_em_drop', 1)} "
                  f"| {ci(r, 'del_non_memorized_nll_change', 3)} |" for r in s["natural"]]
    if "weight" in s:
        lines += ["", "| localizer (single weights) | ratio | recall [95% CI] |", "|---|---|---|"]
        lines += [f"| {r['localizer']} | {r['ratio']:g} | {ci(r, 'recall', 3)} |" for r in s["weight"]]
    lines += ["", "| part | seconds | share of the total |", "|---|---|---|"]
    lines += [f"| {k} | {v:.1f} | {v / total:.1%} |" for k, v in sorted(s["seconds"].items(), key=lambda kv: -kv[1])]
    return "\n".join(lines)


def ig_baseline(model) -> None:
    """Integrated gradients, batched over steps (memlens) vs one forward/backward per step."""
    import torch

    import memlens as ml
    from memlens.analyses.localization.attribution import _token_nll

    paras = model.ground_truth.paragraph_set()[:2]
    steps = 16
    loc = ml.IntegratedGradientsLocalizer(model, steps=steps, progress=False)
    t0 = time.perf_counter()
    fast = loc.run(paras).neuron_scores
    t_fast = time.perf_counter() - t0
    layout = ml.NeuronLayout(model)
    P = paras.prefix_len
    slow = torch.zeros_like(fast)
    t0 = time.perf_counter()
    for L in range(layout.n_layers):
        for i in range(len(paras)):
            tokens = paras.tokens[i : i + 1]
            for j in range(steps):
                alpha = (j + 0.5) / steps
                kept = {}

                def scale(act, hook, alpha=alpha):
                    kept["act"] = act.detach()
                    kept["delta"] = torch.zeros_like(act, requires_grad=True)
                    return act * alpha + kept["delta"]

                with model.hooks(fwd_hooks=[(layout.hook_name(L), scale)]):
                    logp = -_token_nll(model(tokens[:, :-1]), tokens, P)
                (g,) = torch.autograd.grad(logp.sum(), kept["delta"])
                slow[L] += (kept["act"][0] * g[0]).sum(0).cpu() / steps
    slow /= len(paras)
    t_slow = time.perf_counter() - t0
    print(json.dumps({"model": model.name, "paragraphs": len(paras), "steps": steps, "layers": layout.n_layers,
                      "batched_s": round(t_fast, 2), "per_step_s": round(t_slow, 2),
                      "speedup": round(t_slow / t_fast, 2),
                      "max_abs_diff": float((fast - slow).abs().max()), "scale": float(fast.abs().max())}))


def tune(model, args) -> None:
    """The learned-mask localizers (and integrated gradients' steps) over a settings grid on tuning
    seeds: each setting is registered as its own localizer, so one benchmark run (one injection per
    ratio and seed) scores them all."""
    import memlens as ml

    grid = {"hard_concrete": [{"penalty": p, "retain_weight": r} for p in (5, 20, 50) for r in (0.0, 1.0)],
            "slimming": [{"penalty": p, "retain_weight": r} for p in (3, 10, 30) for r in (0.0, 1.0)],
            "integrated_gradients": [{"steps": s} for s in (8, 16, 32)]}
    classes = {"hard_concrete": ml.HardConcreteLocalizer, "slimming": ml.SlimmingLocalizer,
               "integrated_gradients": ml.IntegratedGradientsLocalizer}
    names = {}
    for base, configs in grid.items():
        for settings in configs:
            name = base + "__" + "_".join(f"{k}{v:g}" for k, v in settings.items())
            ml.register_localizer(name, classes[base], **settings)
            names[name] = (base, settings)
    res = ml.LocalizationBenchmark(model, progress=True).run(
        localizers=list(names), ratios=args.ratios, seeds=args.seeds, n_paragraphs=args.n_paragraphs)
    for r in res.table("neuron"):
        base, settings = names[r["localizer"]]
        print(json.dumps({"localizer": base, "settings": settings, "ratio": r["ratio"], "recall": round(r["recall"], 3),
                          "del_target_em_drop": round(r.get("del_target_em_drop", 0), 2),
                          "del_other_em_drop": round(r.get("del_other_em_drop", 0), 2),
                          "seconds": round(r["seconds"], 1)}), flush=True)


if __name__ == "__main__":
    main()
