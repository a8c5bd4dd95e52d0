"""Benchmark: Fig. 5's 20-trial design (compare_masks, masks all / top-k / random, the paper
preset's objective and fresh retain batches) with memlens's per-trial preparation (the scores
before, the references, the retain logits and the objective's gradient map computed once per
trial; target and retain in one forward per step) against the code before it (each run prepared
alone, two forwards per step), run from a git worktree of the base commit in the same run.

Prints, for both: the total time, the time inside the optimizer steps and the share outside them
(goal: <= 15%), and the speed-up.

    python benchmarks/bench_unlearn_trials.py [--model organism] [--trials 20] [--base c668d7f]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(model_name: str, trials: int) -> dict:
    """Time compare_masks on the paper preset's design; the optimizer steps are timed by wrapping
    ``SparseFineTuner._optimize`` (present before and after the change)."""
    warnings.simplefilter("ignore")
    import memlens as ml
    from memlens.analyses import unlearn

    cfg = ml.RunConfig.paper(model_name)
    model = ml.load_model(model_name, progress=False, weights=cfg.weights)
    res = ml.scan(model, model.ground_truth.paragraph_set(), progress=False)
    mem, non = res.memorized(), res.non_memorized()
    u = cfg.unlearn
    inside = [0.0]
    real = unlearn.SparseFineTuner._optimize

    def timed(self, *a, **k):
        t0 = time.perf_counter()
        try:
            return real(self, *a, **k)
        finally:
            inside[0] += time.perf_counter() - t0

    unlearn.SparseFineTuner._optimize = timed
    kwargs = {k: getattr(u, k) for k in ("fraction", "steps", "lr", "weight_decay", "kl_weight", "nll_scale",
                                         "kl_direction", "kl_reduction", "random_mask")}
    t0 = time.perf_counter()
    ml.compare_masks(model, mem[:trials], u.retain_set(non), other_memorized=mem[:16], masks=("all", "topk", "random"),
                     n_trials=trials, retain_per_trial=u.retain_paragraphs, seed=0, progress=False, **kwargs)
    total = time.perf_counter() - t0
    return {"total_s": round(total, 1), "optimizer_s": round(inside[0], 1),
            "outside_share": round(1 - inside[0] / total, 3), "runs": 3 * trials, "code": str(Path(ml.__file__).parent)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="organism")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--base", default="c668d7f", help="the commit before the per-trial preparation")
    ap.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure_only:
        print(json.dumps(measure(args.model, args.trials)))
        return
    after = measure(args.model, args.trials)
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), args.base], check=True)
        try:
            env = os.environ | {"PYTHONPATH": str(tree)}
            out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--measure-only", "--model", args.model,
                                  "--trials", str(args.trials)], env=env, cwd=tree, capture_output=True, text=True,
                                 check=True)
            before = json.loads(out.stdout.strip().splitlines()[-1])
            assert before["code"].startswith(str(tree)), f"the base run imported {before['code']}, not the worktree"
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    print(json.dumps({"model": args.model, "trials": args.trials, "design": "paper preset, masks all/topk/random",
                      "before": before, "after": after, "speedup": round(before["total_s"] / after["total_s"], 2)},
                     indent=2))


if __name__ == "__main__":
    main()
