"""Fig. 5 read from trade-off frontiers (figures for docs/paper-fidelity.md and docs/unlearning.md).

Runs :func:`memlens.mask_tradeoff` with the paper preset's objective and trial design (processed
weights, 0.1 x NLL + KL(batchmean), fresh retain batches of 10) over a grid of learning rates x
steps x weight decays (none, coupled, decoupled) for every mask, with several seeds; prints each
mask's retain EM at target EM 25 with its 95% interval over seeds, its frontier, and the grid
points where top-k spares the retain set as well as random (within random's interval) and where
not. Writes the MaskTradeoff (``--out``) and its rows as JSON.

    python benchmarks/tradeoff_frontier.py [--model organism] [--lrs ...] [--steps 5 10 20]
        [--decays none coupled:1 decoupled:1] [--seeds 0 1 2] [--trials 20] [--out FILE]
        [--add-to SAVED.safetensors]   # extend a saved grid: --out gets the union
    python benchmarks/tradeoff_frontier.py --annotate SAVED.safetensors --model MODEL
        # add each target's planted copies and NLL before to the JSON beside a saved grid
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from typing import Any


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="organism")
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2])
    ap.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--decays", nargs="+", default=["none", "coupled:1", "decoupled:1"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--masks", nargs="+", default=["all", "topk", "random"])
    ap.add_argument("--weights", default=None, help="raw or processed (default: the paper preset's)")
    ap.add_argument("--precision", default=None, choices=["fp32", "bf16-mixed"],
                    help="compute precision (default: fp32, or $MEMLENS_PRECISION; docs/precision.md)")
    ap.add_argument("--out", default=None, help="the MaskTradeoff file (.safetensors); JSON beside it")
    ap.add_argument("--table-from", default=None, metavar="FILE.safetensors", help="only print a saved result's tables")
    ap.add_argument("--add-to", default=None, metavar="FILE.safetensors",
                    help="a saved grid of the same design this run extends (e.g. more learning rates): --out gets both")
    ap.add_argument("--annotate", default=None, metavar="FILE.safetensors",
                    help="add each target's planted copies and NLL before (on --model) to the JSON beside a saved grid, "
                         "and write its summary again from the saved rows")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import memlens as ml

    if args.annotate:
        annotate(ml, args.annotate, args.model)
        return

    if args.table_from:
        print(markdown(ml.MaskTradeoff.load(args.table_from), _saved_meta(args.table_from)))
        return
    cfg = ml.RunConfig.paper(args.model)
    weights = args.weights or cfg.weights
    # everything the end of the run needs is read and checked before the grid is computed
    saved_part = _check_add_to(args, ml) if args.add_to else None
    if args.out:
        from memlens.core.io import check_output_file

        check_output_file(args.out, "--out")
    model = ml.load_model(args.model, progress=False, weights=weights, precision=args.precision)
    if saved_part is not None:
        ml.core.results.check_same_model(saved_part.provenance.model, model.name, f"--add-to {args.add_to} and this run")
    res = ml.scan(model, model.ground_truth.paragraph_set(), progress=False)
    mem, non = res.memorized(), res.non_memorized()
    u = cfg.unlearn
    kw = u.compare_kwargs()
    kw.pop("seed")
    kw["n_trials"] = args.trials
    t0 = time.perf_counter()
    result = ml.mask_tradeoff(model, mem[: args.trials], u.retain_set(non), args.lrs, masks=args.masks,
                              steps=args.steps, decays=args.decays, seeds=args.seeds, progress=True,
                              checkpoint=(args.out + ".grid") if args.out else None, out=args.out, **kw)
    seconds = time.perf_counter() - t0
    meta = {"model": args.model, "weights": weights, "memorized": len(mem), "non_memorized": len(non),
            "trials": args.trials, "seconds": round(seconds, 1), "objective": "paper preset (code's)",
            "precision": model.precision} | target_facts(model, mem[: args.trials])
    if saved_part is not None:
        try:
            result = ml.MaskTradeoff.concat([saved_part, result])
        except ml.InputError as e:
            raise SystemExit(f"tradeoff_frontier: error: {e}; this run's grid is saved alone in {args.out}") from None
        saved = _saved_meta(args.add_to)
        meta["seconds"] = round(seconds + float(saved.get("seconds", 0.0)), 1)
        meta["parts"] = int(saved.get("parts", 1)) + 1
    if args.out:
        from memlens.core.io import write_json_atomic

        result.save(args.out)
        write_json_atomic(_json_beside(args.out), meta | {"summary": result.summary(),
                                                                        "points": result.points()})
    print(markdown(result, meta))


def _check_add_to(args: argparse.Namespace, ml: Any) -> Any:
    """The saved part ``--add-to`` names, loaded and checked against this run's grid before any
    compute: it must load, and no (mask, lr, steps, decay, seed) of this run may be in it already."""
    if not args.out:
        raise SystemExit("tradeoff_frontier: error: --add-to needs --out (the joined grid is written there)")
    try:
        part = ml.MaskTradeoff.load(args.add_to)
    except ml.InputError as e:
        raise SystemExit(f"tradeoff_frontier: error: --add-to: {e}") from None
    from memlens.analyses.mask_comparison import decay_label, parse_decay

    planned = {(m, float(lr), st, decay_label(ml.FineTuneSettings(decay_mode=mode, weight_decay=w)), seed)
               for m in args.masks for lr in args.lrs for st in args.steps
               for mode, w in (parse_decay(d) for d in args.decays) for seed in args.seeds}
    have = {(r["mask"], float(r["lr"]), r["steps"], r["decay"], r["seed"]) for r in part.rows}
    both = sorted(planned & have)
    if both:
        m, lr, st, d, seed = both[0]
        raise SystemExit(f"tradeoff_frontier: error: --add-to {args.add_to} has measured {len(both)} of this run's points "
                         f"already (e.g. mask {m}, lr {lr:g}, {st} steps, decay {d}, seed {seed}); drop them from the grid")
    return part


def target_facts(model: Any, targets: Any) -> dict[str, dict[str, Any]]:
    """Each target's planted copy count (the organisms' metadata; absent for other models) and its
    continuation NLL before unlearning (nats/token, teacher-forced)."""
    from memlens.core.metrics import teacher_forced_scores

    nll = teacher_forced_scores(model, targets.tokens, targets.prefix_len, 8).nll.tolist()
    out = {"target_nll_before": {t: round(v, 4) for t, v in zip(targets.ids, nll)}}
    copies = targets.metadata.get("copies")
    if copies is not None:
        out["target_copies"] = dict(zip(targets.ids, copies))
    return out


def annotate(ml: Any, saved: str, model_name: str) -> None:
    """Add :func:`target_facts` of a saved grid's targets to the JSON beside it (for grids saved
    before this script recorded them)."""
    from memlens.core.io import write_json_atomic

    try:
        result = ml.MaskTradeoff.load(saved)
    except ml.InputError as e:
        raise SystemExit(f"tradeoff_frontier: error: --annotate: {e}") from None
    meta = _saved_meta(saved)
    if not meta:
        raise SystemExit(f"tradeoff_frontier: error: --annotate: no readable JSON beside {saved} ({_json_beside(saved)})")
    model = ml.load_model(model_name, progress=False)
    try:  # copies and NLL do not depend on the weight form
        ml.core.results.check_same_model(result.provenance.model.removesuffix("+processed"),
                                         model.name.removesuffix("+processed"), f"--annotate {saved} and --model {model_name}")
    except ml.InputError as e:
        raise SystemExit(f"tradeoff_frontier: error: {e}") from None
    truth = model.ground_truth.paragraph_set() if model.ground_truth is not None else None
    targets = list(dict.fromkeys(r["target"] for r in result.trials))
    missing = [t for t in targets if truth is None or t not in truth.ids]
    if missing:
        raise SystemExit(f"tradeoff_frontier: error: --annotate: target {missing[0]!r} is not a paragraph of "
                         f"{model_name}'s ground truth")
    meta |= target_facts(model, truth[[truth.ids.index(t) for t in targets]])
    meta |= {"summary": result.summary(), "points": result.points()}  # as this memlens reads the saved rows
    write_json_atomic(_json_beside(saved), meta)
    print(f"annotated {_json_beside(saved)} ({len(targets)} targets)")


def _json_beside(saved: str) -> str:
    """The JSON this script writes beside a saved MaskTradeoff file."""
    return saved.rsplit(".", 1)[0] + ".json"


def _saved_meta(saved: str) -> dict:
    """The run facts (seconds, parts, ...) in the JSON beside a saved grid; empty when it has none."""
    try:
        with open(_json_beside(saved), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def markdown(result, meta: dict) -> str:
    """Retain EM at target EM 25 per mask, each frontier, and where top-k spares like random."""
    def cell(v: dict) -> str:
        return "never forgets to 25" if v["retain_em"] != v["retain_em"] else \
            f"{v['retain_em']:.1f} [{v['ci_low']:.1f}, {v['ci_high']:.1f}]"

    over_targets = result.retain_at(25.0, over="targets") if result.trials else {}
    lines = [json.dumps(meta), "", "| mask | retain EM at target EM 25 [95% CI over seeds] | seeds "
             "| [95% CI over (seed, target) frontiers] |", "|---|---|---|---|"]
    for mask, v in result.retain_at(25.0).items():
        t = over_targets.get(mask)
        lines.append(f"| {mask} | {cell(v)} | {v['n_seeds']} | {cell(t) if t else ''} |")
    for mask in result.masks:
        lines += ["", f"frontier of {mask}: " + "; ".join(
            f"lr {p['lr']:g} x{p['steps']} {p['decay']}: {p['target_em_after']:.1f} / {p['retain_em_after']:.1f}"
            for p in result.frontier(mask))]
    pts = {(p["mask"], p["lr"], p["steps"], p["decay"]): p for p in result.points()}
    rows = []
    for (mask, lr, steps, decay), p in pts.items():
        if mask != "topk" or ("random", lr, steps, decay) not in pts:
            continue
        r = pts[("random", lr, steps, decay)]
        spares = p["retain_em_after_ci_high"] >= r["retain_em_after_ci_low"]
        rows.append(f"| {lr:g} | {steps} | {decay} | {p['target_em_after']:.1f} | {p['retain_em_after']:.1f} "
                    f"[{p['retain_em_after_ci_low']:.1f}, {p['retain_em_after_ci_high']:.1f}] | {r['target_em_after']:.1f} | "
                    f"{r['retain_em_after']:.1f} [{r['retain_em_after_ci_low']:.1f}, {r['retain_em_after_ci_high']:.1f}] | "
                    f"{'yes' if spares else 'no'} |")
    lines += ["", "| lr | steps | decay | top-k target EM | top-k retain EM [CI] | random target EM | random retain EM [CI] | "
              "top-k spares like random |", "|---|---|---|---|---|---|---|---|", *rows]
    if result.trials:
        lines += ["", *per_target_table(result, meta.get("target_copies", {}))]
    return "\n".join(lines)


def per_target_table(result, copies: dict) -> list[str]:
    """Per target paragraph: its planted copies, each mask's retain EM at target EM 25 on that
    target's own frontier (seeds reaching it) and its target EM after at every grid point."""
    rows = result.per_target(25.0)
    masks = list(dict.fromkeys(r["mask"] for r in rows))
    points = list(dict.fromkeys(k for r in rows for k in r["target_em_after"]))
    by = {(r["mask"], r["target"]): r for r in rows}
    head = ["target", "copies"] + [f"{m}: retain at 25 (seeds)" for m in masks] + \
        [f"{m} target EM, {p}" for m in masks for p in points]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for target in dict.fromkeys(r["target"] for r in rows):
        cells = [target, str(copies.get(target, ""))]
        for m in masks:
            r = by.get((m, target))
            cells.append("" if r is None else "never" if r["retain_em"] != r["retain_em"] else
                         f"{r['retain_em']:.1f} ({r['seeds_reaching']}/{r['n_seeds']})")
        for m in masks:
            for p in points:
                r = by.get((m, target))
                v = None if r is None else r["target_em_after"].get(p)
                cells.append("" if v is None else f"{v:.1f}")
        out.append("| " + " | ".join(cells) + " |")
    return out


if __name__ == "__main__":
    main()
