"""Building an organism: corpus -> tokenizer -> paragraphs -> a GPT-Neo trained on them."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from memlens.organism.config import OrganismConfig
from memlens.organism.corpus import corpus_hash, load_documents
from memlens.organism.info import OrganismInfo
from memlens.organism.paragraphs import cut_windows, select_paragraphs, training_order
from memlens.organism.tokenizer import train_tokenizer


def gpt_neo_config(cfg: OrganismConfig, eos_id: int):
    """The GPT-Neo architecture of the paper (alternating global/local attention), scaled down."""
    from transformers import GPTNeoConfig

    pairs = cfg.n_layers // 2
    attention_types = [[["global", "local"], pairs]] + ([[["global"], 1]] if cfg.n_layers % 2 else [])
    return GPTNeoConfig(
        vocab_size=cfg.vocab_size, max_position_embeddings=cfg.n_ctx, hidden_size=cfg.d_model,
        num_layers=cfg.n_layers, num_heads=cfg.n_heads, attention_types=attention_types,
        window_size=cfg.window_size, intermediate_size=4 * cfg.d_model,
        bos_token_id=eos_id, eos_token_id=eos_id, tie_word_embeddings=True,
    )


def build_organism(
    cfg: OrganismConfig, seed: int, out_dir: Path, progress: bool = True, checkpoint_every: int = 100,
    stop_after: int | None = None,
) -> OrganismInfo | None:
    """Build into ``out_dir`` (model/, tokenizer/, ground truth). Resumes from ``checkpoint.pt``
    if an earlier build of the same folder was interrupted. ``stop_after`` ends training after
    that many steps with a checkpoint and returns None (to test resuming)."""
    from transformers import GPTNeoForCausalLM

    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    docs = load_documents()
    c_hash = corpus_hash(docs)
    tok_texts, budget = [], cfg.tokenizer_chars
    for d in docs:
        if budget <= 0:
            break
        tok_texts.append(d.text[:budget])
        budget -= len(d.text)
    tokenizer = train_tokenizer(tok_texts, cfg.vocab_size, out_dir / "tokenizer")
    doc_tokens = tokenizer([d.text for d in docs], add_special_tokens=False)["input_ids"]
    windows = cut_windows(doc_tokens, cfg.paragraph_len, cfg.min_unique_tokens)
    planted, background, held_out = select_paragraphs(windows, cfg, seed)
    stream = training_order(planted, background, seed)
    t_data = time.perf_counter() - t0

    torch.manual_seed(seed)
    model = GPTNeoForCausalLM(gpt_neo_config(cfg, tokenizer.eos_token_id))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    warmup = max(1, int(cfg.warmup_frac * cfg.steps))

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, cfg.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ckpt_path = out_dir / "checkpoint.pt"
    start, losses = 0, []
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, losses = state["step"], state["losses"]
        torch.set_rng_state(state["rng"])
    model.train()
    bar = tqdm(range(start, cfg.steps), desc=f"training organism ({cfg.size})", disable=not progress,
               initial=start, total=cfg.steps)
    t_train = time.perf_counter()
    for step in bar:
        batch = stream[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if (step + 1) % checkpoint_every == 0 and step + 1 < cfg.steps or step + 1 == stop_after:
            _save_checkpoint(ckpt_path, model, opt, sched, step + 1, losses)
        if step + 1 == stop_after:
            return None
    model.eval()
    from memlens.loading import _quiet_transformers

    with _quiet_transformers():
        model.save_pretrained(str(out_dir / "model"))
    counts = torch.bincount(stream.flatten(), minlength=cfg.vocab_size)
    info = OrganismInfo(
        planted=planted, background=background, held_out=held_out, unigram_counts=counts,
        seed=seed, corpus_hash=c_hash, config=cfg.to_dict(),
        stats={
            "data_seconds": round(t_data, 1),
            "train_seconds": round(time.perf_counter() - t_train, 1),
            "build_seconds": round(time.perf_counter() - t0, 1),
            "final_loss": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 4),
            "n_params": sum(p.numel() for p in model.parameters()),
            "corpus_documents": len(docs),
            "corpus_paragraphs": len(windows),
        },
    )
    info.save(out_dir / "ground_truth")
    if ckpt_path.exists():
        ckpt_path.unlink()
    return info


def _save_checkpoint(path: Path, model, opt, sched, step: int, losses: list[float]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
         "step": step, "losses": losses, "rng": torch.get_rng_state()},
        tmp,
    )
    os.replace(tmp, path)
