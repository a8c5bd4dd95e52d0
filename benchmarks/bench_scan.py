"""Benchmark: scan of 256 paragraphs x 100 tokens on a GPT-Neo-125M-sized model (random weights).

memlens' teacher-forced scan (one batched forward pass) against the usual way: greedy decoding
with a KV cache, then a separate NLL pass. Checks that EM is identical, prints the speed ratio
and the achieved GFLOP/s against a plain matmul measured in the same run.

    python benchmarks/bench_scan.py [--n 256] [--batch-size 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from memlens import ParagraphSet, greedy_decode, scan
from memlens.loading import from_hf
from memlens.core.metrics import generate_then_score
from memlens.testing import random_tokens, tiny_tokenizer


def gpt_neo_125m(seed: int = 0):
    import transformers as T

    cfg = T.GPTNeoConfig(vocab_size=50257, max_position_embeddings=2048, hidden_size=768, num_layers=12,
                         num_heads=12, attention_types=[[["global", "local"], 6]], window_size=256,
                         intermediate_size=3072, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(seed)
    hf = T.GPTNeoForCausalLM(cfg).eval()
    with torch.no_grad():  # random init is near-uniform; sharpen so greedy decoding has no ties
        hf.lm_head.weight.mul_(8.0)
    return hf


def forward_flops(hf, batch: int, length: int) -> float:
    """Multiply-adds x 2 of one forward pass (matmuls only: projections, attention, unembedding)."""
    c = hf.config
    d, L, V, f = c.hidden_size, c.num_layers, c.vocab_size, c.intermediate_size
    per_token = L * (4 * d * d + 2 * d * f) + d * V
    attn = L * 2 * length * length * d  # QK^T and AV, full causal square (upper bound)
    return 2.0 * batch * (length * per_token + attn)


def matmul_gflops(seconds: float = 3.0) -> float:
    a, b = torch.randn(1600, 768), torch.randn(768, 3072)
    a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2 * 1600 * 768 * 3072 * n / (time.perf_counter() - t0) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = from_hf(gpt_neo_125m(), tiny_tokenizer(), name="gpt-neo-125M-random")
    tokens = random_tokens(args.n, 100, 50257, seed=1)
    # a quarter of the paragraphs recite their continuation (EM 50); a quarter break it after
    # k tokens: so EM takes many values, not only 0
    q = args.n // 4
    gen = greedy_decode(model, tokens[: 2 * q, :50], 50, batch_size=args.batch_size)
    tokens[: 2 * q, 50:] = gen
    ks = torch.randint(0, 50, (q,))
    tokens[q + torch.arange(q), 50 + ks] = (gen[q + torch.arange(q), ks] + 1) % 50257
    paras = ParagraphSet.from_tokens(tokens, prefix_len=50)

    t0 = time.perf_counter()
    base_em, base_nll = generate_then_score(model, tokens, 50, batch_size=args.batch_size)
    t_base = time.perf_counter() - t0

    t0 = time.perf_counter()
    res = scan(model, paras, batch_size=args.batch_size, progress=False)
    t_ml = time.perf_counter() - t0

    identical = torch.equal(res.em, base_em)
    flops = forward_flops(model.hf_model, args.n, 99)
    achieved = flops / t_ml / 1e9
    peak = matmul_gflops()
    out = {
        "paragraphs": args.n, "threads": torch.get_num_threads(),
        "baseline_generate_plus_nll_s": round(t_base, 2), "memlens_scan_s": round(t_ml, 2),
        "speedup": round(t_base / t_ml, 2), "em_identical": identical,
        "max_nll_diff": float((res.nll - base_nll).abs().max()),
        "em_values": sorted(set(res.em.tolist()))[:10],
        "scan_gflops": round(achieved, 1), "matmul_gflops": round(peak, 1),
        "fraction_of_matmul": round(achieved / peak, 2),
    }
    print(json.dumps(out, indent=2))
    print(f"scan speedup vs generate+NLL: {out['speedup']}x (target >= 1.5x), EM identical: {identical}; "
          f"{achieved:.1f} GFLOP/s = {out['fraction_of_matmul']:.0%} of plain matmul ({peak:.1f} GFLOP/s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    if not identical:
        raise SystemExit("EM differs between memlens scan and generate: a bug")


if __name__ == "__main__":
    main()
