"""Fig. 5 under the paper preset beside memlens's defaults, and the masks' trade-off curves
(figures for docs/paper-fidelity.md).

For one organism: scan its ground-truth paragraphs, then for each trial seed run
:func:`memlens.compare_masks` (unlearning, masks all / top-k / random) with the settings of
``RunConfig.recommended`` (memlens's defaults), of ``RunConfig.paper`` (the official code's
objective, optimizer, trial design and processed weights) and of the paper's settings on raw
weights (``paper-raw``: what weight processing alone changes), and with the paper's settings the lr grid of
``tradeoff.lrs`` (:func:`memlens.mask_tradeoff`). The seed draws the retain batches and
the random masks (the organism itself is the same). Prints a markdown table and writes JSON.

    python benchmarks/paper_fig5.py [--model organism] [--seeds 0 1 2] [--trials 20] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import warnings


PAPER = {"all": (26.90, 45.11), "topk": (26.75, 45.84), "random": (49.80, 44.86)}  # target EM, retain EM


def main() -> None:
    from memlens import RunConfig, compare_masks, load_model, scan

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="organism")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=None, help="trials per mask (default: each config's n_targets)")
    ap.add_argument("--tradeoff-seeds", type=int, default=1, help="seeds (the first ones) that also run the lr grid")
    ap.add_argument("--lrs", type=float, nargs="*", default=None, help="lr grid (default: the preset's)")
    ap.add_argument("--configs", nargs="*", default=None, help="memlens, paper, paper-raw (default: all)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--table-from", default=None, metavar="FILE.json", help="only print the tables of a saved run")
    ap.add_argument("--tradeoff-only", action="store_true",
                    help="run only the lr grid (a comparison at the preset's lr was measured before)")
    args = ap.parse_args()
    if args.table_from:
        print(markdown(json.loads(open(args.table_from).read())))
        return
    warnings.simplefilter("ignore")

    raw = load_model(args.model, progress=False)
    models = {"raw": raw, "processed": load_model(args.model, progress=False, weights="processed")}
    res = scan(raw, raw.ground_truth.paragraph_set(), progress=False)
    mem, non = res.memorized(), res.non_memorized()
    out: dict = {"model": args.model, "memorized": len(mem), "non_memorized": len(non), "seeds": args.seeds, "runs": []}
    paper = RunConfig.paper(args.model)
    configs = {"memlens": RunConfig.recommended(args.model), "paper": paper,
               "paper-raw": dataclasses.replace(paper, weights="raw")}
    if args.configs:
        configs = {k: v for k, v in configs.items() if k in args.configs}
    for name, cfg in configs.items():
        model = models[cfg.weights]
        u = cfg.unlearn
        if args.trials:
            u = dataclasses.replace(u, n_targets=args.trials)
        targets = mem[: u.n_targets]
        retain = u.retain_set(non)
        for k, seed in enumerate(args.seeds):
            kw = u.compare_kwargs(seed=seed)
            if args.tradeoff_only:
                if name == "paper" and k < args.tradeoff_seeds:
                    _tradeoff(out, args, model, targets, retain, mem, cfg, kw, seed)
                continue
            t0 = time.perf_counter()
            table = compare_masks(model, targets, retain, other_memorized=mem[:16], masks=("all", "topk", "random"),
                                  lr=u.lr, progress=False, **kw)
            row = {"config": name, "weights": cfg.weights, "seed": seed, "lr": u.lr, "seconds": round(time.perf_counter() - t0, 1),
                   "settings": kw["settings"].to_dict() | {k2: v for k2, v in kw.items() if k2 not in ("seed", "settings")},
                   "table": table.summary()["table"]}
            out["runs"].append(row)
            save(args.out, out)  # after every comparison: an interrupted measurement keeps what it has
            print(json.dumps({"config": name, "seed": seed, "seconds": row["seconds"]}), flush=True)
            if name == "paper" and k < args.tradeoff_seeds:
                _tradeoff(out, args, model, targets, retain, mem, cfg, kw, seed)
    print(markdown(out))


def _tradeoff(out: dict, args: argparse.Namespace, model, targets, retain, mem, cfg, kw: dict, seed: int) -> None:
    """The masks' trade-off curves over the lr grid (the preset's, or --lrs) for one seed, saved."""
    from memlens import mask_tradeoff

    lrs = args.lrs if args.lrs is not None else list(cfg.tradeoff.lrs)
    t0 = time.perf_counter()
    curves = mask_tradeoff(model, targets, retain, lrs, masks=("all", "topk", "random"), progress=False,
                           other_memorized=mem[:16], **kw)
    out.setdefault("tradeoff", []).append({"seed": seed, "seconds": round(time.perf_counter() - t0, 1),
                                           "table": curves.summary()["table"]})
    save(args.out, out)


def save(path: str | None, out: dict) -> None:
    if path:
        from memlens.core.io import write_json_atomic

        write_json_atomic(path, out)


def markdown(out: dict) -> str:
    """Mean over seeds of each (config, mask) row: target / retain EM after, with the spread
    (min-max over seeds of the per-seed means) and the per-seed 95% bootstrap intervals."""
    lines = [f"{out['model']}: {out['memorized']} memorized, {out['non_memorized']} non-memorized; seeds {out['seeds']}",
             "", "| settings | mask | target EM after | retain EM after | paper (target / retain) |", "|---|---|---|---|---|"]
    for name in ("memlens", "paper", "paper-raw"):
        runs = [r for r in out["runs"] if r["config"] == name]
        if not runs:
            continue
        for mask in ("all", "topk", "random"):
            rows = [next(t for t in r["table"] if t["mask"] == mask) for r in runs]
            cell = []
            for key in ("target_em_after", "retain_em_after"):
                vals = [t[key] for t in rows]
                lo = min(t[f"{key}_ci_low"] for t in rows)
                hi = max(t[f"{key}_ci_high"] for t in rows)
                cell.append(f"{sum(vals) / len(vals):.1f} (seeds {min(vals):.1f}-{max(vals):.1f}; CI {lo:.1f}-{hi:.1f})")
            lines.append(f"| {name} ({runs[0]['weights']} weights, lr {runs[0]['lr']:g}, {rows[0]['n_trials']} trials) | {mask} | {cell[0]} | {cell[1]} "
                         f"| {PAPER[mask][0]} / {PAPER[mask][1]} |")
    for t in out.get("tradeoff", []):
        lines += ["", f"trade-off (paper settings, seed {t['seed']}):", "", "| mask | lr | target EM after | retain EM after |",
                  "|---|---|---|---|"]
        for r in t["table"]:
            lines.append(f"| {r['mask']} | {r['lr']:g} | {r['target_em_after']:.1f} "
                         f"({r['target_em_after_ci_low']:.1f}-{r['target_em_after_ci_high']:.1f}) | "
                         f"{r['retain_em_after']:.1f} ({r['retain_em_after_ci_low']:.1f}-{r['retain_em_after_ci_high']:.1f}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
