"""Benchmark: a gradient map of 32 paragraphs x 100 tokens on a GPT-Neo-125M-sized model.

Baseline: one plain forward + backward of the same batch (HuggingFace model, every parameter
trainable, continuation NLL). Target: the gradient map within 1.3x of it. Each side runs in its
own process so that its peak resident memory is its own; both are reported against model size.

    python benchmarks/bench_gradients.py [--n 32] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def run_one(mode: str, n: int, batch_size: int) -> dict:
    import torch.nn.functional as F

    from memlens import ParagraphSet
    from memlens.analyses.gradients import GradientMap
    from memlens.loading import from_hf
    from memlens.testing import random_tokens, tiny_tokenizer

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from bench_scan import gpt_neo_125m

    hf = gpt_neo_125m()
    n_params = sum(p.numel() for p in hf.parameters())
    tokens = random_tokens(n, 100, 50257, seed=1)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode == "plain":
        hf.train(False)
        # warm-up on 2 paragraphs, then the timed pass
        for batch in (tokens[:2], tokens):
            hf.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            logits = hf(batch[:, :-1]).logits[:, 49:]
            F.cross_entropy(logits.transpose(1, 2), batch[:, 50:]).backward()
            seconds = time.perf_counter() - t0
    else:
        model = from_hf(hf, tiny_tokenizer(), name="gpt-neo-125M-random")
        paras = ParagraphSet.from_tokens(tokens, prefix_len=50)
        gm = GradientMap(model)
        gm.run(paras[:2], progress=False)
        t0 = time.perf_counter()
        res = gm.run(paras, batch_size=batch_size, progress=False)
        seconds = time.perf_counter() - t0
        assert len(res.scores) == 12 * (4 * 12 + 2)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"mode": mode, "seconds": round(seconds, 2), "peak_rss_mb": round(peak_kb / 1024, 1),
            "rss_before_mb": round(rss0 / 1024, 1), "model_mb": round(n_params * 4 / 2**20, 1),
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--mode", choices=["plain", "map"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(run_one(args.mode, args.n, args.batch_size)))
        return
    res = {}
    for mode in ("plain", "map"):
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--n", str(args.n),
                              "--batch-size", str(args.batch_size)], capture_output=True, text=True, check=True)
        res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = res["map"]["seconds"] / res["plain"]["seconds"]
    summary = {
        "paragraphs": args.n, "plain_forward_backward_s": res["plain"]["seconds"],
        "gradient_map_s": res["map"]["seconds"], "time_ratio": round(ratio, 2),
        "model_mb": res["map"]["model_mb"],
        "plain_peak_rss_mb": res["plain"]["peak_rss_mb"], "map_peak_rss_mb": res["map"]["peak_rss_mb"],
        "map_peak_over_model": round(res["map"]["peak_rss_mb"] / res["map"]["model_mb"], 2),
        "plain_peak_over_model": round(res["plain"]["peak_rss_mb"] / res["plain"]["model_mb"], 2),
    }
    print(json.dumps(summary, indent=2))
    print(f"gradient map / plain forward+backward: {ratio:.2f}x (target <= 1.3x); peak RSS "
          f"{summary['map_peak_rss_mb']} MB = {summary['map_peak_over_model']}x the fp32 model "
          f"(plain: {summary['plain_peak_over_model']}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
