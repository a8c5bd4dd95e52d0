"""Factories of tiny models and tokenizers for tests and examples (SAELens-style), all offline.

``random_model("gpt_neo")`` builds a randomly initialised model of a supported architecture
in well under a second, with a small BPE tokenizer trained on ``pydoc_data`` topics.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import torch

from memlens.core.model import HookedModel

TINY_VOCAB = 512


@functools.lru_cache(maxsize=None)
def tiny_tokenizer_dir(vocab_size: int = TINY_VOCAB) -> Path:
    """A folder holding a byte-level BPE tokenizer trained on the ``pydoc_data`` topics."""
    import pydoc_data.topics

    from memlens.organism.tokenizer import train_tokenizer

    folder = Path(tempfile.mkdtemp(prefix="memlens-tiny-tokenizer-"))
    train_tokenizer(list(pydoc_data.topics.topics.values()), vocab_size, folder)
    return folder


def tiny_tokenizer(vocab_size: int = TINY_VOCAB) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir(vocab_size)))


#: the architectures random_hf_model builds (every row of memlens.core.architectures.ARCHITECTURES)
RANDOM_ARCHS: tuple[str, ...] = ("gpt_neo", "gpt2", "gpt_neox", "llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2",
                                 "gemma", "gemma2", "stablelm", "opt", "phi", "gptj", "bloom", "phi3")


def _hf_config(arch: str, vocab_size: int, d_model: int, n_layers: int, n_heads: int, n_ctx: int,
               window_size: int) -> Any:
    """A tiny HuggingFace config of ``arch`` (grouped-query where the family has it)."""
    import transformers as T

    common: dict[str, Any] = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0)
    kv = max(1, n_heads // 2)
    decoder = dict(max_position_embeddings=n_ctx, hidden_size=d_model, num_hidden_layers=n_layers,
                   num_attention_heads=n_heads, **common)
    if arch == "gpt_neo":
        layers = [[["global", "local"], n_layers // 2]] if n_layers % 2 == 0 else [[["global"], n_layers]]
        return T.GPTNeoConfig(max_position_embeddings=n_ctx, hidden_size=d_model, num_layers=n_layers,
                              num_heads=n_heads, attention_types=layers, window_size=window_size,
                              intermediate_size=4 * d_model, **common)
    if arch == "gpt2":
        return T.GPT2Config(n_positions=n_ctx, n_embd=d_model, n_layer=n_layers, n_head=n_heads, **common)
    if arch == "gpt_neox":
        return T.GPTNeoXConfig(intermediate_size=4 * d_model, **decoder)
    if arch == "gptj":
        return T.GPTJConfig(n_positions=n_ctx, n_embd=d_model, n_layer=n_layers, n_head=n_heads,
                            rotary_dim=d_model // n_heads // 2, **common)
    if arch == "opt":
        return T.OPTConfig(ffn_dim=4 * d_model, word_embed_proj_dim=d_model, pad_token_id=1, **decoder)
    if arch == "phi":
        return T.PhiConfig(intermediate_size=4 * d_model, num_key_value_heads=kv, **decoder)
    if arch == "phi3":
        return T.Phi3Config(intermediate_size=2 * d_model, num_key_value_heads=kv, pad_token_id=0, **decoder)
    if arch == "bloom":
        return T.BloomConfig(hidden_size=d_model, n_layer=n_layers, n_head=n_heads, **common)
    gated = dict(intermediate_size=2 * d_model, num_key_value_heads=kv, **decoder)
    classes = {"llama": T.LlamaConfig, "mistral": T.MistralConfig, "qwen2": T.Qwen2Config, "qwen3": T.Qwen3Config,
               "olmo": T.OlmoConfig, "olmo2": T.Olmo2Config, "gemma": T.GemmaConfig, "gemma2": T.Gemma2Config,
               "stablelm": T.StableLmConfig}
    if arch not in classes:
        raise ValueError(f"unknown architecture {arch!r}; random_hf_model builds {', '.join(RANDOM_ARCHS)}")
    if arch in ("qwen3", "gemma", "gemma2"):
        gated["head_dim"] = d_model // n_heads
    return classes[arch](**gated)


def random_hf_model(
    arch: str = "gpt_neo", *, vocab_size: int = TINY_VOCAB, d_model: int = 64, n_layers: int = 2,
    n_heads: int = 4, n_ctx: int = 128, seed: int = 0, window_size: int = 16,
) -> torch.nn.Module:
    """A random HuggingFace causal LM of one of :data:`RANDOM_ARCHS` (grouped-query where the
    family has it), with sharpened output logits so that greedy decoding is far from ties."""
    import transformers as T

    cfg = _hf_config(arch, vocab_size, d_model, n_layers, n_heads, n_ctx, window_size)
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(cfg).eval()
    # random init gives near-uniform logits; sharpen them so greedy decoding is far from ties
    with torch.no_grad():
        for p in model.get_output_embeddings().parameters():
            p.mul_(8.0)
    return model


def random_model(arch: str = "gpt_neo", **kwargs: Any) -> HookedModel:
    """A :class:`HookedModel` around :func:`random_hf_model` with the tiny tokenizer."""
    from memlens.loading import from_hf

    hf = random_hf_model(arch, **kwargs)
    return from_hf(hf, tiny_tokenizer(hf.config.vocab_size), name=f"random-{arch}")


def random_tokens(n: int, length: int, vocab_size: int = TINY_VOCAB, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab_size, (n, length), generator=g)


class Interrupted:
    """A stand-in for a scoring function (``fn(model, tokens, ...)``) that records the rows of
    each call in :attr:`calls` and raises ``error`` on call number ``fail_at`` (1-based; never if
    None): a Ctrl-C or a kill in the middle of a long loop, for resumption tests."""

    def __init__(self, fn: Any, fail_at: int | None = None, error: type[BaseException] = KeyboardInterrupt) -> None:
        self.fn, self.fail_at, self.error = fn, fail_at, error
        self.calls: list[int] = []

    def __call__(self, model: Any, tokens: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(int(tokens.shape[0]))
        if len(self.calls) == self.fail_at:
            raise self.error
        return self.fn(model, tokens, *args, **kwargs)


def write_paragraph_jsonl(path: Path, paragraphs: Any, **extra: Any) -> Path:
    """Write ``paragraphs`` as a JSONL paragraph file (``id`` and ``tokens`` per line, plus any
    ``extra`` keys on every line); returns ``path``."""
    import json

    with Path(path).open("w", encoding="utf-8") as f:
        for r in paragraphs.to_records():
            f.write(json.dumps({"id": r["id"], "tokens": r["tokens"], **extra}) + "\n")
    return Path(path)


@torch.no_grad()
def hand_patched_nll_change(hf_model: torch.nn.Module, out_proj: torch.nn.Module, pair: Any, head: int, d_head: int,
                            position: int | list[int] | None = None) -> float:
    """Activation patching by hand, without any TransformerLens hook: run ``pair.corrupt``
    through a HuggingFace model, keep the input of the out-projection ``out_proj`` (the heads'
    z, concatenated), then run ``pair.clean`` with head ``head``'s slice of that input replaced
    by the corrupted one (at ``position``, or at every position) and return NLL(patched) -
    NLL(clean) of ``pair.target`` after the last token, in nats."""
    sl = slice(head * d_head, (head + 1) * d_head)
    saved = {}

    def keep(mod: torch.nn.Module, args: tuple) -> None:
        saved["z"] = args[0].clone()

    def put(mod: torch.nn.Module, args: tuple) -> tuple:
        x = args[0].clone()
        if position is None:
            x[..., sl] = saved["z"][..., sl]
        else:
            x[:, position, sl] = saved["z"][:, position, sl]
        return (x,)

    def nll(tokens: torch.Tensor) -> float:
        logits = hf_model(tokens[None]).logits[0, -1]
        return float(-torch.log_softmax(logits.float(), -1)[pair.target])

    handle = out_proj.register_forward_pre_hook(keep)
    hf_model(pair.corrupt[None])
    handle.remove()
    handle = out_proj.register_forward_pre_hook(put)
    try:
        patched = nll(pair.clean)
    finally:
        handle.remove()
    return patched - nll(pair.clean)
