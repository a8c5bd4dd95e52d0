"""Why the paper's top-k gradient does not find planted single weights (issue #41, item 3; figures
for docs/localization.md).

Per seed, ``--n-paragraphs`` paragraphs the model does not recite are injected through a random
``--ratio`` of the single weights of the trainable set (``memlens.inject_weights``, as the
localization benchmark's weight level does), and each per-weight score's top-n (n = the planted
count) is compared with the planted weights:

- ``gradient``: |dNLL/dW| of the injected paragraphs after the injection (the paper's top-k score);
- ``scale_normalized``: that |gradient| divided by its row-times-column scale (a memlens variant:
  how large a weight's gradient is for its input row and output column);
- ``contrast``: |g(injected) - g(non-memorized)|, the gradient of the injected paragraphs minus that
  of as many non-memorized ones;
- ``gradient_before``: |gradient| of the same paragraphs *before* the injection (a control: it
  cannot know what will be planted);
- ``gradient_change``: |g(after) - g(before)| (needs the model before the paragraphs were learned:
  a diagnostic of where the information is, not a localizer a study of natural memorization has);
- ``random``: the floor (= the ratio).

And the diagnostics that say what the top-k picks: the Jaccard index of the top-n |gradient|
masks before and after the injection (is the mask a property of the model and the text?), that of
the top-n |gradient| and the top-n of its row-times-column part, the share of the variance of
log |gradient| that row and column effects explain, and the mean |gradient| at the planted weights
over that elsewhere, after and before the injection (1 = the gradient does not tell them apart).

    python benchmarks/weight_recall.py [--model organism] [--ratio 0.01] [--seeds 0 1 2]
        [--n-paragraphs 4] [--retain-weight 1.0] [--precision fp32] [--out FILE.json]

Each finished seed is kept in ``OUT.rows`` (a memlens checkpoint): re-running the same command
resumes; another model or setting is refused in one line (``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

SCORES = ("gradient", "scale_normalized", "contrast", "gradient_before", "gradient_change", "random")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="organism")
    ap.add_argument("--ratio", type=float, default=0.01)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n-paragraphs", type=int, default=4)
    ap.add_argument("--precision", default=None, choices=["fp32", "bf16-mixed"],
                    help="compute precision (default: the model's, fp32); docs/precision.md")
    ap.add_argument("--retain-weight", type=float, default=None,
                    help="weight of the injection's KL term on as many non-memorized paragraphs (default: the "
                         "injection's own, 1.0; 0 injects on the paragraphs' NLL alone)")
    ap.add_argument("--out", default=None, help="the JSON to write (rows resume from OUT.rows)")
    ap.add_argument("--fresh", action="store_true", help="ignore a checkpoint made with other settings")
    args = ap.parse_args()
    if not 0 < args.ratio < 1:
        raise SystemExit(f"weight_recall: error: --ratio must be in (0, 1), got {args.ratio}")
    if args.retain_weight is not None and not args.retain_weight >= 0:
        raise SystemExit(f"weight_recall: error: --retain-weight must be >= 0, got {args.retain_weight}")
    if args.n_paragraphs < 1:
        raise SystemExit(f"weight_recall: error: --n-paragraphs must be at least 1, got {args.n_paragraphs}")
    warnings.simplefilter("ignore")
    import memlens as ml
    from memlens.core.checkpoint import Checkpoint, model_identity
    from memlens.core.io import check_output_file, write_json_atomic

    if args.out:
        check_output_file(args.out, "--out")
    model = ml.load_model(args.model, progress=False, precision=args.precision)
    truth = model.ground_truth
    if truth is None:
        raise SystemExit(f"weight_recall: error: {args.model} has no planted ground truth; use an organism")
    res = ml.scan(model, truth.paragraph_set(), progress=False)
    non = res.non_memorized()
    from memlens.analyses.injection import not_recited

    pool = not_recited(model, truth.held_out)
    if len(pool) < args.n_paragraphs or len(non) < args.n_paragraphs:
        raise SystemExit(f"weight_recall: error: {len(pool)} paragraphs to inject and {len(non)} non-memorized for "
                         f"--n-paragraphs {args.n_paragraphs}; lower it")
    retain_weight = ml.InjectionSettings.resolve(None, retain_weight=args.retain_weight).retain_weight
    ckpt = Checkpoint(args.out + ".rows", "weight-recall", model_identity(model) | {
        "ratio": args.ratio, "n_paragraphs": args.n_paragraphs, "retain_weight": retain_weight},
        fresh=args.fresh) if args.out else None
    try:
        done = {int(k[0]): v for k, v in ckpt.load().items()} if ckpt is not None else {}
    except ml.InputError as e:
        raise SystemExit(f"weight_recall: error: {e}") from None
    rows = []
    for seed in args.seeds:
        if seed in done:
            rows.append(done[seed])
            continue
        row = one_seed(ml, model, pool, non, args.ratio, args.n_paragraphs, seed, retain_weight)
        rows.append(row)
        print(f"seed {seed}: " + ", ".join(f"{k} {row['recall'][k]:.3f}" for k in SCORES) + f" ({row['seconds']:.0f} s)",
              flush=True)
        if ckpt is not None:
            ckpt.append((seed,), row)
    summary = summarize(ml, rows)
    out = {"model": args.model, "precision": model.precision, "ratio": args.ratio, "n_paragraphs": args.n_paragraphs,
           "retain_weight": retain_weight,
           "seeds": args.seeds, "seconds": round(sum(r["seconds"] for r in rows), 1), "summary": summary, "rows": rows}
    print(markdown(out))
    if args.out:
        write_json_atomic(args.out, out)
        if ckpt is not None:
            ckpt.remove()


def one_seed(ml: Any, model: Any, pool: Any, non: Any, ratio: float, n: int, seed: int,
             retain_weight: float = 1.0) -> dict[str, Any]:
    """Inject, score and compare for one seed (the model's weights are restored afterwards); the
    injection keeps ``n`` non-memorized paragraphs' outputs with a KL term of ``retain_weight``."""
    import torch

    from memlens.analyses.localization.weight_scores import (mask_jaccard, mask_recall, rank_one_scale,
                                                             row_column_r2, scale_normalized, top_weight_mask)
    from memlens.core.model import preserved_weights

    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    targets = pool[torch.randperm(len(pool), generator=g)[:n].tolist()]
    contrast = non[torch.randperm(len(non), generator=g)[:n].tolist()]
    gmap = ml.GradientMap(model, progress=False)

    def grads(paragraphs: Any) -> dict[str, torch.Tensor]:
        r = gmap.run(paragraphs, objective="nll", signed_weight_grads=True, progress=False)
        return {k: v.float() for k, v in r.weight_grads.items()}

    before = grads(targets)
    with preserved_weights(model.tl_model):
        inj = ml.inject_weights(model, targets, ratio, seed=seed, batch_size=n, progress=False, retain=contrast,
                                retain_weight=retain_weight)
        after = grads(targets)
        other = grads(contrast)
    planted = inj.planted_weights
    names = [k for k in after if k in planted]  # the gradient's order (it seeds the random scores)
    count = sum(int(planted[k].sum()) for k in names)
    gen = torch.Generator().manual_seed(10_000 + seed)
    scores = {
        "gradient": {k: after[k].abs() for k in names},
        "scale_normalized": {k: scale_normalized(after[k]) for k in names},
        "contrast": {k: (after[k] - other[k]).abs() for k in names},
        "gradient_before": {k: before[k].abs() for k in names},
        "gradient_change": {k: (after[k] - before[k]).abs() for k in names},
        "random": {k: torch.rand(after[k].shape, generator=gen) for k in names},
    }
    tops = {name: top_weight_mask(s, count) for name, s in scores.items()}
    rank_one_top = top_weight_mask({k: rank_one_scale(after[k]) for k in names}, count)
    sizes = {k: after[k].numel() for k in names}

    def planted_ratio(grad: dict[str, torch.Tensor]) -> float:
        inside = sum(float(grad[k].abs()[planted[k]].sum()) for k in names) / count
        outside = sum(float(grad[k].abs()[~planted[k]].sum()) for k in names) / (sum(sizes.values()) - count)
        return inside / outside if outside > 0 else float("nan")

    r2 = sum(row_column_r2(after[k]) * sizes[k] for k in names) / sum(sizes.values())
    return {"seed": seed, "paragraphs": list(targets.ids), "memorized_after_injection": float(inj.success_rate),
            "injection_steps": inj.steps, "planted": count,
            "recall": {name: mask_recall(tops[name], planted) for name in SCORES},
            "jaccard_top_before_after": mask_jaccard(tops["gradient"], tops["gradient_before"]),
            "jaccard_top_rank_one": mask_jaccard(tops["gradient"], rank_one_top),
            "row_column_r2": r2, "planted_gradient_ratio_after": planted_ratio(after),
            "planted_gradient_ratio_before": planted_ratio(before), "seconds": round(time.perf_counter() - t0, 1)}


def summarize(ml: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and 95% bootstrap interval over seeds of every recall and diagnostic."""
    from memlens.core.stats import bootstrap_mean_ci

    def stat(values: list[float]) -> dict[str, float]:
        lo, hi = bootstrap_mean_ci(values)
        return {"mean": sum(values) / len(values), "ci_low": lo, "ci_high": hi}

    out = {f"recall_{name}": stat([r["recall"][name] for r in rows]) for name in SCORES}
    for key in ("jaccard_top_before_after", "jaccard_top_rank_one", "row_column_r2", "planted_gradient_ratio_after",
                "planted_gradient_ratio_before", "memorized_after_injection"):
        out[key] = stat([r[key] for r in rows])
    return out


def markdown(out: dict[str, Any]) -> str:
    s = out["summary"]

    def cell(key: str) -> str:
        v = s[key]
        return f"{v['mean']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"

    lines = [f"{out['model']} ({out['precision']}), {out['ratio']:.0%} of single weights planted, "
             f"{out['n_paragraphs']} paragraphs, injection retain weight {out['retain_weight']:g}, seeds {out['seeds']}, "
             f"{out['seconds']:.0f} s", "",
             "| score | recall of the planted weights [95% CI over seeds] |", "|---|---|"]
    lines += [f"| {name} | {cell('recall_' + name)} |" for name in SCORES]
    lines += ["", f"Jaccard of the top-n |gradient| before vs after the injection: {cell('jaccard_top_before_after')}",
              f"Jaccard of the top-n |gradient| vs its row x column part: {cell('jaccard_top_rank_one')}",
              f"variance of log |gradient| explained by row + column effects: {cell('row_column_r2')}",
              f"mean |gradient| at the planted weights / elsewhere, after: {cell('planted_gradient_ratio_after')}, "
              f"before: {cell('planted_gradient_ratio_before')}",
              f"share of the injected paragraphs recited after the injection: {cell('memorized_after_injection')}"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
