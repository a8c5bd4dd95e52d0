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


def random_hf_model(
    arch: str = "gpt_neo", *, vocab_size: int = TINY_VOCAB, d_model: int = 64, n_layers: int = 2,
    n_heads: int = 4, n_ctx: int = 128, seed: int = 0, window_size: int = 16,
) -> torch.nn.Module:
    """A random HuggingFace causal LM: ``gpt_neo``, ``gpt2``, ``gpt_neox`` or ``llama`` (grouped-query)."""
    import transformers as T

    common = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0)
    if arch == "gpt_neo":
        layers = [[["global", "local"], n_layers // 2]] if n_layers % 2 == 0 else [[["global"], n_layers]]
        cfg = T.GPTNeoConfig(
            max_position_embeddings=n_ctx, hidden_size=d_model, num_layers=n_layers, num_heads=n_heads,
            attention_types=layers, window_size=window_size, intermediate_size=4 * d_model, **common,
        )
        cls = T.GPTNeoForCausalLM
    elif arch == "gpt2":
        cfg = T.GPT2Config(n_positions=n_ctx, n_embd=d_model, n_layer=n_layers, n_head=n_heads, **common)
        cls = T.GPT2LMHeadModel
    elif arch == "gpt_neox":
        cfg = T.GPTNeoXConfig(
            max_position_embeddings=n_ctx, hidden_size=d_model, num_hidden_layers=n_layers,
            num_attention_heads=n_heads, intermediate_size=4 * d_model, **common,
        )
        cls = T.GPTNeoXForCausalLM
    elif arch == "llama":
        cfg = T.LlamaConfig(
            max_position_embeddings=n_ctx, hidden_size=d_model, num_hidden_layers=n_layers,
            num_attention_heads=n_heads, num_key_value_heads=max(1, n_heads // 2),
            intermediate_size=2 * d_model, **common,
        )
        cls = T.LlamaForCausalLM
    else:
        raise ValueError(f"unknown architecture {arch!r}")
    torch.manual_seed(seed)
    model = cls(cfg).eval()
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
