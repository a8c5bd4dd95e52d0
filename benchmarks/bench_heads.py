"""Benchmark: attribution patching vs exact activation patching of every (layer, head, position)
cell of hook_z, on a GPT-Neo-125M-sized model (random weights), a few paragraph pairs.

Each pair is a random paragraph and a copy with one prefix token replaced; the metric is the NLL
of the clean first continuation token (the HeadLocalizer's metric). Exact patching runs one
patched forward per cell (batched); attribution patching runs two forward+backward passes per
pair. Prints the ratio of times and the rank agreement (Spearman over all cells, and over heads
after summing positions), for the noising and the denoising direction.

    python benchmarks/bench_heads.py [--pairs 2] [--prefix-len 24] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--prefix-len", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()

    from memlens.loading import from_hf
    from memlens.analyses.patching import PatchPair, attribution_patching, exact_patching
    from memlens.core.stats import spearman
    from memlens.testing import random_tokens, tiny_tokenizer

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from bench_scan import gpt_neo_125m

    model = from_hf(gpt_neo_125m(), tiny_tokenizer(), name="gpt-neo-125M-random")
    P = args.prefix_len
    toks = random_tokens(args.pairs, P + 1, 50257, seed=3)
    pairs = []
    for i in range(args.pairs):
        corrupt = toks[i, :P].clone()
        corrupt[P // 2] = (corrupt[P // 2] + 1) % 50257
        pairs.append(PatchPair(f"p{i}", toks[i, :P].clone(), corrupt, int(toks[i, P]), 0))
    attribution_patching(model, pairs[0], kinds=("z",), per_position=True)  # warm-up
    t0 = time.perf_counter()
    attr = [attribution_patching(model, p, kinds=("z",), per_position=True) for p in pairs]
    t_attr = time.perf_counter() - t0
    t0 = time.perf_counter()
    exact = [exact_patching(model, p, kinds=("z",), per_position=True, batch_size=args.batch_size) for p in pairs]
    t_exact = time.perf_counter() - t0
    n_cells = sum(e.noising.numel() for e in exact)
    out = {"model": "GPT-Neo-125M-sized, random", "pairs": args.pairs, "length": P, "cells": n_cells,
           "exact_s": round(t_exact, 2), "attribution_s": round(t_attr, 3), "speedup": round(t_exact / t_attr, 1),
           "threads": torch.get_num_threads()}
    for d in ("noising", "denoising"):
        e = torch.cat([getattr(x, d).flatten() for x in exact]).tolist()
        a = torch.cat([getattr(x, d).flatten() for x in attr]).tolist()
        out[f"spearman_cells_{d}"] = round(spearman(e, a), 3)
        eh = torch.stack([getattr(x, d).sum(-1).flatten() for x in exact]).mean(0).tolist()
        ah = torch.stack([getattr(x, d).sum(-1).flatten() for x in attr]).mean(0).tolist()
        out[f"spearman_heads_{d}"] = round(spearman(eh, ah), 3)
    print(json.dumps(out, indent=2))
    print(f"attribution patching: {out['speedup']}x faster than exact patching over {n_cells} cells; "
          f"rank agreement (cells) noising {out['spearman_cells_noising']}, denoising {out['spearman_cells_denoising']}")


if __name__ == "__main__":
    main()
