"""Benchmark: ``precision = "bf16-mixed"`` (bfloat16 matmuls under autocast on float32 weights)
against ``fp32``, in one run on one warm model, for each analysis the real model spends its time in:
scan, gradient map, one fine-tuning run of the paper's design (1 target + 10 retain paragraphs, 5
steps, the official code's objective), a prefix perturbation sweep, and the gradient, integrated
gradients and HardConcrete localizers (HardConcrete at a fixed number of steps, so that both
precisions do the same work). Prints each time, the ratio fp32 / bf16-mixed (goal >= 3x on
SmolLM2), and with ``--profile`` the share of each stage's CPU time that ran in bfloat16 kernels.

With ``--study``, also times the whole ``memlens run`` both ways (two fresh run folders; long: fp32
took 30:57 on SmolLM2 with the two cores shared).

    python benchmarks/bench_precision.py [--model organism-smollm2] [--repeats 1] [--profile] [--study]
        [--out docs/measurements/precision-speed-smollm2.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "bf16-mixed")


def tasks(model: Any, sizes: dict[str, int]) -> dict[str, Callable[[], Any]]:
    """The measured calls, each a closure over the model's memorized / non-memorized paragraphs."""
    import memlens as ml

    paras = model.ground_truth.paragraph_set()
    res = ml.scan(model, paras, progress=False)
    mem, non = res.memorized(), res.non_memorized()
    scan_set = paras[: sizes["scan"]]

    def finetune() -> Any:
        tuner = ml.SparseFineTuner(model, progress=False)
        with tuner.restored():
            return tuner.unlearn(mem[[0]], retain=non[:10], settings=ml.FineTuneSettings.paper_code())

    def localizer(name: str, **kw: Any) -> Callable[[], Any]:
        return lambda: ml.make_localizer(name, model, progress=False, **kw).run(
            mem[: sizes["localize"]], contrast=non[: sizes["localize"]])

    return {
        "scan": lambda: ml.scan(model, scan_set, progress=False),
        "gradient map": lambda: ml.GradientMap(model, progress=False).run(mem[: sizes["gradients"]]),
        "fine-tuning run (1 + 10, 5 steps)": finetune,
        "perturbation sweep": lambda: ml.PrefixPerturber(model, progress=False).run(
            mem[: sizes["perturb"]], n_samples=1, seed=0),
        "localizer: gradient": localizer("gradient"),
        "localizer: integrated_gradients": localizer("integrated_gradients"),
        "localizer: hard_concrete (fixed steps)": localizer("hard_concrete", max_steps=sizes["hard_concrete_steps"],
                                                            patience=10**6),
    }


MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_mkldnn", "mkldnn", "onednn")


def profile_share(model: Any, fn: Callable[[], Any]) -> dict[str, Any]:
    """Under bf16-mixed: the share of self CPU time in bfloat16 matmul kernels, in float32 matmul
    kernels, and in everything else (casts, softmax, optimizer, Python), and the top operators."""
    from torch.profiler import ProfilerActivity, profile

    with model.using_precision("bf16-mixed"), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    bf16 = fp32 = other = 0.0
    for ev in prof.events():
        t = ev.self_cpu_time_total
        if any(ev.name.startswith(k) or k in ev.name for k in MATMULS):
            if any("BFloat16" in str(d) for d in (getattr(ev, "input_dtypes", None) or [])):
                bf16 += t
            else:
                fp32 += t
        else:
            other += t
    total = bf16 + fp32 + other or 1.0
    top = sorted(((ev.self_cpu_time_total, ev.key) for ev in prof.key_averages()), reverse=True)[:6]
    return {"bf16_matmul_share": round(bf16 / total, 3), "fp32_matmul_share": round(fp32 / total, 3),
            "other_share": round(other / total, 3), "top_ops": [f"{k} {t / 1e6:.2f}s" for t, k in top]}


def study(model_name: str) -> dict[str, float]:
    """Seconds of a whole ``memlens run`` at each precision (fresh folders, the model cached)."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in PRECISIONS:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "memlens.run.cli", "run", "--model", model_name, "--precision", precision,
                            "--out", str(Path(tmp) / precision), "--quiet"], check=True, cwd=ROOT,
                           stdout=subprocess.DEVNULL)
            out[precision] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="organism-smollm2")
    ap.add_argument("--repeats", type=int, default=1, help="timings per precision (the minimum is kept)")
    ap.add_argument("--scan", type=int, default=64, help="paragraphs scanned")
    ap.add_argument("--gradients", type=int, default=16, help="memorized paragraphs of the gradient map")
    ap.add_argument("--perturb", type=int, default=2, help="memorized paragraphs swept (every position, 1 sample)")
    ap.add_argument("--localize", type=int, default=4, help="paragraphs localized (and as many contrast ones)")
    ap.add_argument("--hard-concrete-steps", type=int, default=5)
    ap.add_argument("--only", nargs="*", default=None, help="task names to run (substrings)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--study", action="store_true", help="also time the whole `memlens run` both ways")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import torch

    import memlens as ml

    if args.threads:
        torch.set_num_threads(args.threads)
    model = ml.load_model(args.model, progress=False)
    sizes = {"scan": args.scan, "gradients": args.gradients, "perturb": args.perturb, "localize": args.localize,
             "hard_concrete_steps": args.hard_concrete_steps}
    rows = []
    for name, fn in tasks(model, sizes).items():
        if args.only and not any(o in name for o in args.only):
            continue
        times: dict[str, float] = {}
        for precision in PRECISIONS:
            with model.using_precision(precision):
                best = float("inf")
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    fn()
                    best = min(best, time.perf_counter() - t0)
            times[precision] = round(best, 2)
        row = {"task": name, "fp32_s": times["fp32"], "bf16_mixed_s": times["bf16-mixed"],
               "ratio": round(times["fp32"] / times["bf16-mixed"], 2)}
        if args.profile:
            row["profile"] = profile_share(model, fn)
        rows.append(row)
        print(json.dumps(row), flush=True)
    out: dict[str, Any] = {"model": args.model, "threads": torch.get_num_threads(), "torch": torch.__version__,
                           "sizes": sizes, "repeats": args.repeats, "rows": rows}
    if args.study:
        out["study_s"] = study(args.model)
        out["study_ratio"] = round(out["study_s"]["fp32"] / out["study_s"]["bf16-mixed"], 2)
    print("\n| task | fp32 (s) | bf16-mixed (s) | ratio |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['task']} | {r['fp32_s']} | {r['bf16_mixed_s']} | **{r['ratio']}x** |")
    if "study_s" in out:
        print(f"| whole `memlens run` | {out['study_s']['fp32']} | {out['study_s']['bf16-mixed']} | "
              f"**{out['study_ratio']}x** |")
    if args.out:
        from memlens.core.io import write_json_atomic

        write_json_atomic(Path(args.out), out)


if __name__ == "__main__":
    main()
