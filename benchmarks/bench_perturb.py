"""Benchmark: a full prefix-perturbation sweep (every prefix position x 4 random replacements)
of 16 paragraphs x 100 tokens on a GPT-Neo-125M-sized model (random weights).

memlens: teacher-forced EM with the unperturbed prefix's keys/values reused. Baseline (the
paper's way): greedy generation of 50 tokens for each perturbed prefix (KV cache), then an NLL
pass. The baseline is slow (about half an hour here for all 3,200 perturbed prefixes), so by
default it runs on a random sample of them and its time is scaled to the full sweep; EM is
checked identical on that sample. ``--baseline-sample 0`` runs it on every prefix.

    python benchmarks/bench_perturb.py [--n 16] [--samples 4] [--baseline-sample 256]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scan import gpt_neo_125m  # noqa: E402

from memlens import ParagraphSet, greedy_decode  # noqa: E402
from memlens.loading import from_hf  # noqa: E402
from memlens.core.metrics import generate_then_score  # noqa: E402
from memlens.analyses.perturb import PrefixPerturber  # noqa: E402
from memlens.testing import random_tokens, tiny_tokenizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--baseline-sample", type=int, default=256)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    model = from_hf(gpt_neo_125m(), tiny_tokenizer(), name="gpt-neo-125M-random")
    prefixes = random_tokens(args.n, 50, 50257, seed=1)
    paras = ParagraphSet.from_tokens(torch.cat([prefixes, greedy_decode(model, prefixes, 50)], 1), prefix_len=50)

    pert = PrefixPerturber(model, batch_size=64)
    t0 = time.perf_counter()
    res = pert.run(paras, strategy="random", n_samples=args.samples, seed=0, reference="true", progress=False)
    t_ml = time.perf_counter() - t0
    n_total = len(res.em)

    pick = torch.randperm(n_total, generator=torch.Generator().manual_seed(0))
    pick = pick[: args.baseline_sample] if args.baseline_sample > 0 else pick
    tokens = paras.tokens[res.index[pick]].clone()
    tokens[torch.arange(len(pick)), res.position[pick]] = res.token[pick]
    t0 = time.perf_counter()
    base_em, base_nll = generate_then_score(model, tokens, 50, batch_size=32)
    t_base_sample = time.perf_counter() - t0
    t_base = t_base_sample * n_total / len(pick)
    identical = torch.equal(base_em, res.em[pick])
    out = {
        "paragraphs": args.n, "perturbed_prefixes": n_total, "threads": torch.get_num_threads(),
        "memlens_sweep_s": round(t_ml, 1), "baseline_prefixes_timed": len(pick),
        "baseline_timed_s": round(t_base_sample, 1), "baseline_full_s_estimated": round(t_base, 1),
        "speedup": round(t_base / t_ml, 2), "em_identical_on_timed_prefixes": identical,
        "max_nll_diff": float((base_nll - res.nll[pick]).abs().max()),
        "mean_em_drop": round(res.mean_em_drop(), 2),
    }
    print(json.dumps(out, indent=2))
    print(f"perturbation sweep speedup vs generate+NLL: {out['speedup']}x (target >= 3x); "
          f"EM identical on {len(pick)} timed prefixes: {identical}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    if not identical:
        raise SystemExit("EM differs between the sweep and greedy generation: a bug")


if __name__ == "__main__":
    main()
