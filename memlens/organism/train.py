"""Building an organism: corpus -> tokenizer -> paragraphs -> a GPT-Neo trained on them."""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from jaxtyping import Int
from torch import Tensor
from memlens.core.progress import tqdm

from memlens.core.data import ParagraphSet

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


@dataclass(frozen=True, kw_only=True)
class OrganismData:
    """What a build trains on: the corpus, its tokenizer, the paragraphs and the training stream."""

    n_documents: int
    corpus_hash: str
    tokenizer: Any
    n_windows: int
    planted: ParagraphSet
    background: ParagraphSet
    held_out: ParagraphSet
    stream: Int[Tensor, "sequences length"]


def prepare_data(cfg: OrganismConfig, seed: int, out_dir: Path) -> OrganismData:
    """Corpus -> tokenizer (saved in ``out_dir/tokenizer``) -> paragraphs -> the shuffled stream
    of planted copies and background paragraphs."""
    docs = load_documents()
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
    return OrganismData(n_documents=len(docs), corpus_hash=corpus_hash(docs), tokenizer=tokenizer,
                        n_windows=len(windows), planted=planted, background=background, held_out=held_out,
                        stream=training_order(planted, background, seed))


def warmup_cosine(steps: int, warmup_frac: float) -> Callable[[int], float]:
    """Learning-rate factor per step: linear warm-up, then cosine decay to 10%."""
    warmup = max(1, int(warmup_frac * steps))

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    return lr_at


def train(
    model: torch.nn.Module, stream: Int[Tensor, "sequences length"], *, steps: int, batch_size: int, lr: float,
    weight_decay: float, warmup_frac: float, checkpoint: Path, desc: str = "training", progress: bool = True,
    checkpoint_every: int = 100, stop_after: int | None = None,
) -> list[float] | None:
    """Causal-LM training on consecutive batches of ``stream`` (AdamW, warm-up + cosine, clipped
    gradients), resumable from ``checkpoint``. Returns the loss per step (nats/token), or None
    when stopped after ``stop_after`` steps with a checkpoint written."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, warmup_frac))
    start, losses = _load_checkpoint(checkpoint, model, opt, sched)
    model.train()
    bar = tqdm(range(start, steps), desc=desc, disable=not progress, initial=start, total=steps)
    for step in bar:
        batch = stream[step * batch_size : (step + 1) * batch_size]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if (step + 1) % checkpoint_every == 0 and step + 1 < steps or step + 1 == stop_after:
            _save_checkpoint(checkpoint, model, opt, sched, step + 1, losses)
        if step + 1 == stop_after:
            return None
    model.eval()
    return losses


def build_organism(
    cfg: OrganismConfig, seed: int, out_dir: Path, progress: bool = True, checkpoint_every: int = 100,
    stop_after: int | None = None,
) -> OrganismInfo | None:
    """Build into ``out_dir`` (model/, tokenizer/, ground truth). Resumes from ``checkpoint.pt``
    if an earlier build of the same folder was interrupted. ``stop_after`` ends training after
    that many steps with a checkpoint and returns None (to test resuming)."""
    from transformers import GPTNeoForCausalLM

    from memlens.core.compat import quiet_transformers

    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    data = prepare_data(cfg, seed, out_dir)
    t_data = time.perf_counter() - t0
    torch.manual_seed(seed)
    model = GPTNeoForCausalLM(gpt_neo_config(cfg, data.tokenizer.eos_token_id))
    ckpt_path = out_dir / "checkpoint.pt"
    t_train = time.perf_counter()
    losses = train(model, data.stream, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                   weight_decay=cfg.weight_decay, warmup_frac=cfg.warmup_frac, checkpoint=ckpt_path,
                   desc=f"training organism ({cfg.size})", progress=progress, checkpoint_every=checkpoint_every,
                   stop_after=stop_after)
    if losses is None:
        return None
    with quiet_transformers():
        model.save_pretrained(str(out_dir / "model"))
    info = OrganismInfo(
        planted=data.planted, background=data.background, held_out=data.held_out,
        unigram_counts=torch.bincount(data.stream.flatten(), minlength=cfg.vocab_size),
        seed=seed, corpus_hash=data.corpus_hash, config=cfg.to_dict(),
        stats={
            "data_seconds": round(t_data, 1),
            "train_seconds": round(time.perf_counter() - t_train, 1),
            "build_seconds": round(time.perf_counter() - t0, 1),
            "final_loss": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 4),
            "n_params": sum(p.numel() for p in model.parameters()),
            "corpus_documents": data.n_documents,
            "corpus_paragraphs": data.n_windows,
        },
    )
    info.save(out_dir / "ground_truth")
    if ckpt_path.exists():
        ckpt_path.unlink()
    return info


def _load_checkpoint(path: Path, model: torch.nn.Module, opt: Any, sched: Any) -> tuple[int, list[float]]:
    """Restore a checkpoint written by :func:`_save_checkpoint`; a damaged one is set aside (the
    build restarts from step 0) rather than failing every later build."""
    if not path.exists():
        return 0, []
    try:
        state = torch.load(path, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        return int(state["step"]), list(state["losses"])
    except Exception as e:  # noqa: BLE001 - any damage means: start over
        warnings.warn(f"{path} is damaged ({type(e).__name__}: {e}); training restarts from step 0", stacklevel=2)
        path.unlink()
        return 0, []


def _save_checkpoint(path: Path, model, opt, sched, step: int, losses: list[float]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
         "step": step, "losses": losses, "rng": torch.get_rng_state()},
        tmp,
    )
    os.replace(tmp, path)
