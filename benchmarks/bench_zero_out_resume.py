"""Benchmark: zero-out's inner loop on a real model (SmolLM2-135M, 30 layers x 1,536 neurons),
resumed at the zeroed layer (``HookedModel.forward_from``) against the full forward pass.

Zero-out (and integrated gradients) intervene at one layer many times on the same paragraphs; the
blocks below that layer compute the same thing every time. Baseline: the full forward pass of
``neurons x paragraphs`` rows with one neuron zeroed per row (what ``ZeroOutLocalizer`` ran before).
Resumed: the residual entering the layer once per layer (included in the time), then the upper
blocks only. Every layer runs one batch both ways; the continuation NLLs must agree exactly.
Paragraphs are ``--paragraphs`` windows of the standard-library corpus, 150 tokens (prefix 50).

    python benchmarks/bench_zero_out_resume.py [--paragraphs 4] [--neurons 16] [--precision bf16-mixed]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--paragraphs", type=int, default=4)
    ap.add_argument("--neurons", type=int, default=16, help="neurons zeroed per layer (one batch)")
    ap.add_argument("--precision", default="bf16-mixed", choices=["fp32", "bf16-mixed"])
    ap.add_argument("--prefix-len", type=int, default=50)
    ap.add_argument("--length", type=int, default=150)
    args = ap.parse_args()

    import memlens as ml
    from memlens.core.neurons import NeuronLayout
    from memlens.core.objectives import nll_of_logits
    from memlens.organism.corpus import load_documents

    model = ml.load_model(str(ml.smollm2_gguf_path()))
    model.precision = args.precision
    layout = NeuronLayout(model)
    P, n = args.prefix_len, args.paragraphs
    texts = [d.text for d in load_documents() if len(d.text) > 3000][:n]
    tokens = torch.stack([model.to_tokens(t)[0, : args.length].cpu() for t in texts])
    batch = tokens.repeat(args.neurons, 1)
    rows = torch.arange(args.neurons).repeat_interleave(n) * (layout.d_mlp // args.neurons)

    def zero(act: torch.Tensor, hook: Any) -> torch.Tensor:
        act = act.clone()
        act[torch.arange(len(rows)), :, rows] = 0.0
        return act

    t_full = t_resumed = 0.0
    worst = 0.0
    with torch.no_grad():
        model(tokens[:1, :8])  # warm-up
        for L in range(model.n_layers):
            hook = [(layout.hook_name(L), zero)]
            t0 = time.perf_counter()
            with model.hooks(fwd_hooks=hook):
                full = nll_of_logits(model(batch[:, :-1], positions_from=P - 1), batch[:, P:], reduction="none")
            t_full += time.perf_counter() - t0
            t0 = time.perf_counter()
            name = f"blocks.{L}.hook_resid_pre"
            _, acts, _ = model.capture(tokens[:, :-1], [name])
            with model.hooks(fwd_hooks=hook):
                logits = model.forward_from(acts[name].repeat(args.neurons, 1, 1), L, positions_from=P - 1)
                resumed = nll_of_logits(logits, batch[:, P:], reduction="none")
            t_resumed += time.perf_counter() - t0
            worst = max(worst, float((full - resumed).abs().max()))
    out = {"model": "SmolLM2-135M (GGUF, float32 weights)", "precision": args.precision, "layers": model.n_layers,
           "rows_per_layer": len(batch), "length": args.length, "full_forward_s": round(t_full, 1),
           "resumed_s": round(t_resumed, 1), "speedup": round(t_full / t_resumed, 2),
           "max_abs_nll_difference": worst, "threads": torch.get_num_threads()}
    print(json.dumps(out, indent=2))
    print(f"zero-out resumed at the zeroed layer: {out['speedup']}x faster than the full forward pass over "
          f"{model.n_layers} layers x {len(batch)} rows; NLLs differ by at most {worst:.2e}")


if __name__ == "__main__":
    main()
