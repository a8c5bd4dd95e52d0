"""The resurfacing audit on an organism (figures for docs/resurfacing.md): each mask and objective
unlearns groups of memorized paragraphs, then relearning, unrelated fine-tuning, quantization,
prefixes and noise attack the unlearned model; prints the recovered share of each attack with its
95% interval, the quantization and localization measures, and the time. Resumable (``--out X``
keeps its checkpoint at ``X.blocks`` until the result is written).

With ``--calibrate``, unlearns one group per learning rate and mask instead, and prints the target
and retain EM after unlearning: the numbers the per-mask learning rates are chosen from (a mask's
rate where it forgets to a comparable target EM).

    python benchmarks/resurfacing.py [--model organism] [--masks all topk selective random]
        [--lrs 1e-4 1e-3 3e-3 1e-2] [--objectives paper npo] [--trials 3] [--precision bf16-mixed]
        [--out docs/measurements/resurfacing-organism.json]
    python benchmarks/resurfacing.py --calibrate [--model organism] [--grid 1e-4 3e-4 1e-3 3e-3 1e-2]
        [--out docs/measurements/resurfacing-calibration-organism.json]   (resumable, row by row)
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="organism")
    ap.add_argument("--masks", nargs="+", default=["all", "topk", "selective", "random"])
    ap.add_argument("--lrs", type=float, nargs="+", default=None, help="one learning rate per mask (the paper's objective)")
    ap.add_argument("--npo-lrs", type=float, nargs="+", default=None, help="one learning rate per mask under NPO")
    ap.add_argument("--objectives", nargs="+", default=["paper", "npo"])
    ap.add_argument("--attacks", nargs="+", default=None)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--relearn-lr", type=float, default=None)
    ap.add_argument("--relearn-steps", type=int, nargs="+", default=None)
    ap.add_argument("--precision", default=None, choices=["fp32", "bf16-mixed"])
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--grid", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2])
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--table-from", default=None)
    args = ap.parse_args()
    if args.table_from:
        print(markdown(json.loads(Path(args.table_from).read_text())))
        return
    warnings.simplefilter("ignore")
    import memlens as ml

    if args.out:
        from memlens.core.io import check_output_file

        check_output_file(args.out, "--out")
    model = ml.load_model(args.model, progress=False, precision=args.precision)
    scan = ml.scan(model, model.ground_truth.paragraph_set(), progress=False)
    mem, non = scan.memorized(), scan.non_memorized()
    settings = ml.FineTuneSettings.paper_code(steps=args.steps, weight_decay=0.0)
    if args.calibrate:
        return calibrate(ml, model, mem, non, settings, args)
    if args.lrs is None or len(args.lrs) != len(args.masks):
        raise SystemExit("resurfacing: error: give --lrs, one learning rate per mask (run --calibrate to choose them)")
    design = ml.ResurfacingSettings(**{k: v for k, v in (("group_size", args.group_size),
                                                         ("relearn_lr", args.relearn_lr),
                                                         ("relearn_steps", tuple(args.relearn_steps or ())))
                                       if v})
    blocks = (args.out + ".blocks") if args.out else None
    t0 = time.perf_counter()
    res = ml.ResurfacingAudit(model, progress=True).run(
        mem, non, masks=args.masks, objectives=args.objectives, attacks=args.attacks or ml.analyses.resurfacing.ATTACKS,
        n_trials=args.trials, settings=settings, design=design,
        lr={"paper": dict(zip(args.masks, args.lrs)), "npo": dict(zip(args.masks, args.npo_lrs or args.lrs))},
        checkpoint=blocks, fresh=args.fresh)
    out = {"model": args.model, "precision": model.precision, "seconds_this_process": round(time.perf_counter() - t0, 1),
           "memorized": len(mem), "non_memorized": len(non), "settings": vars(args), "summary": res.summary(),
           "block_seconds": sum(d["seconds"] for d in res.details if d["kind"] == "time")}
    if args.out:
        from memlens.core.io import write_json_atomic

        res.save(args.out.rsplit(".", 1)[0] + ".safetensors")
        write_json_atomic(args.out, out)
        Path(blocks).unlink(missing_ok=True)
    print(markdown(out))


def calibrate(ml, model, mem, non, settings, args) -> None:
    """Target and retain EM after unlearning one group of ``group_size`` (seed 0) per mask x lr.
    With ``--out``, each row goes to a checkpoint (``OUT.rows``) as it finishes and the JSON is
    rewritten complete after every row; a later call with the same model, precision, group size
    and steps skips the rows already there (another calibration's checkpoint is refused)."""
    import dataclasses

    import torch

    from memlens.core.checkpoint import Checkpoint, model_identity
    from memlens.core.io import write_json_atomic

    ckpt = Checkpoint(args.out + ".rows", "resurfacing-calibration", model_identity(model) | {
        "group_size": args.group_size, "steps": args.steps}, fresh=args.fresh) if args.out else None
    try:
        done = {(str(k[0]), str(k[1]), float(k[2])): v for k, v in ckpt.load().items()} if ckpt is not None else {}
    except ml.InputError as e:
        raise SystemExit(f"resurfacing: error: {e}") from None
    rows: list[dict] = list(done.values())
    gen = torch.Generator().manual_seed(0)
    group = mem[torch.randperm(len(mem), generator=gen)[: args.group_size].tolist()]
    retain = non[torch.randperm(len(non), generator=gen)[:10].tolist()]
    tuner = ml.SparseFineTuner(model, progress=False)
    print("| objective | mask | lr | target EM | retain EM | seconds |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['objective']} | {r['mask']} | {r['lr']:g} | {r['target_em_after']:.1f} | "
              f"{r['retain_em_after']:.1f} | {r['seconds']} (earlier) |")
    for objective in args.objectives:
        for mask in args.masks:
            for lr in args.grid:
                if (objective, mask, lr) in done:
                    continue
                st = dataclasses.replace(settings, lr=lr, forget_loss="npo" if objective == "npo" else "nll")
                t0 = time.perf_counter()
                with tuner.restored():
                    r = tuner.unlearn(group, retain, mask=mask, settings=st)
                s = r.summary()
                row = {"objective": objective, "mask": mask, "lr": lr, "target_em_after": s["target_em_after"],
                       "retain_em_after": s["retain_em_after"], "seconds": round(time.perf_counter() - t0, 1)}
                rows.append(row)
                print(f"| {objective} | {mask} | {lr:g} | {row['target_em_after']:.1f} | {row['retain_em_after']:.1f} "
                      f"| {row['seconds']} |", flush=True)
                if ckpt is not None:
                    ckpt.append((objective, mask, lr), row)
                    write_json_atomic(args.out, {"identity": ckpt.identity, "group": list(group.ids),
                                                 "retain": list(retain.ids), "calibration": rows})


def markdown(out: dict) -> str:
    s = out["summary"]
    lines = [f"{out['model']} ({out.get('precision', 'fp32')}): {s['trials']} trials, blocks {out['block_seconds']:.0f} s", "",
             "| objective | mask | attack | variant | set | EM before | unlearned | after | recovered [95% CI] | control EM | retain EM |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(v, d=1):
        return "" if v is None else f"{v:.{d}f}"

    for r in s["headline"]:
        rec = "nothing unlearned" if r["recovered"] is None else \
            f"{r['recovered']:.2f} [{f(r['recovered_ci_low'], 2)}, {f(r['recovered_ci_high'], 2)}]"
        lines.append(f"| {r['objective']} | {r['mask']} | {r['attack']} | {r['variant']} | {r['set']} | "
                     f"{f(r['em_before'])} | {f(r['em_unlearned'])} | {f(r['em_after'])} | {rec} | "
                     f"{f(r.get('control_em_after'))} | {f(r.get('retain_em_after'))} |")
    lines += ["", "| objective/mask/measure | values (means over trials) |", "|---|---|"]
    for k, v in s["details"].items():
        if "/time" in k:
            continue
        lines.append(f"| {k} | " + ", ".join(f"{m} {x}" for m, x in v.items()) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
