"""Benchmark: the head stage's attribution screen on a real model (SmolLM2-135M: 30 layers x 9
heads, 3 key/value heads), against exact activation patching of every head.

Baseline: exact patching of q, k, v and z of every head, both directions (what HeadLocalizer did
before ``exact_top``). Screen: attribution patching of every head (two forward+backward passes per
pair), then exact patching of the ``--top`` heads it ranks highest. Pairs are paragraphs of the
standard-library corpus with one prefix token replaced; the metric is the NLL of the first
continuation token. Prints the ratio of times and how many of the exact top heads the screen kept.

    python benchmarks/bench_head_screen.py [--pairs 2] [--top 12] [--prefix-len 48]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--prefix-len", type=int, default=48)
    args = ap.parse_args()

    import memlens as ml
    from memlens.organism.corpus import load_documents
    from memlens.core.stats import spearman

    model = ml.load_model(str(ml.smollm2_gguf_path()))
    P = args.prefix_len
    docs = [d.text for d in load_documents() if len(d.text) > 4000][: args.pairs]
    pairs = []
    for i, text in enumerate(docs):
        toks = model.to_tokens(text[1000:4000])[0, : P + 1].cpu()
        corrupt = toks[:P].clone()
        corrupt[P // 2] = (corrupt[P // 2] + 17) % model.vocab_size
        pairs.append(ml.PatchPair(f"doc{i}", toks[:P].clone(), corrupt, int(toks[P]), 0))
    kinds = ("z", "q", "k", "v")
    t0 = time.perf_counter()
    full = [ml.exact_patching(model, p, kinds=kinds) for p in pairs]
    t_full = time.perf_counter() - t0
    t0 = time.perf_counter()
    attr = [ml.attribution_patching(model, p, kinds=kinds) for p in pairs]
    screen = torch.stack([a.effect("noising", "z") for a in attr]).mean(0).flatten()
    top = screen.topk(args.top).indices.tolist()
    heads = [divmod(i, model.n_heads) for i in top]
    part = [ml.exact_patching(model, p, kinds=kinds, heads=heads) for p in pairs]
    t_screen = time.perf_counter() - t0
    exact_z = torch.stack([f.effect("noising", "z") for f in full]).mean(0).flatten()
    best = set(exact_z.topk(args.top).indices.tolist())
    patched = torch.stack([p.effect("noising", "z") for p in part]).mean(0).flatten()
    same = torch.allclose(patched[top], exact_z[top], atol=1e-5)
    out = {"model": "SmolLM2-135M (GGUF, float32)", "heads": model.n_layers * model.n_heads, "pairs": len(pairs),
           "length": P, "exact_all_s": round(t_full, 1), "screen_s": round(t_screen, 1),
           "speedup": round(t_full / t_screen, 1), "top": args.top,
           "exact_top_heads_kept_by_screen": len(best & set(top)),
           "spearman_heads_attribution_vs_exact_z_noising": round(spearman(screen.tolist(), exact_z.tolist()), 3),
           "screened_values_equal_full_run": bool(same), "threads": torch.get_num_threads()}
    print(json.dumps(out, indent=2))
    print(f"attribution screen + exact patching of {args.top} heads: {out['speedup']}x faster than exact patching of "
          f"all {out['heads']}; it kept {out['exact_top_heads_kept_by_screen']} of the exact top {args.top}")


if __name__ == "__main__":
    main()
