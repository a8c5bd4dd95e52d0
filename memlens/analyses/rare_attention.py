"""Attention to rare tokens (Stoehr et al., 2024, Section 6): how much each head attends, from the
first continuation position, to the prefix tokens that are rare in the corpus."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import einops
import torch
from jaxtyping import Float
from torch import Tensor
from memlens.core.progress import tqdm

from memlens.core.data import ParagraphSet
from memlens.core.defaults import RANK_REDUCES, RankReduce, RankTies, one_of
from memlens.core.errors import InputError
from memlens.core.results import Provenance, Result
from memlens.core.stats import kendall_tau
from memlens.analyses.frequency import UnigramCounts
from memlens.core.precision import with_precision

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from memlens.core.model import HookedModel


@dataclass(frozen=True, kw_only=True)
class RareAttentionResult(Result):
    """Attention from ``query_position`` onto the prefix, for every head.

    Attributes:
        attention: ``[paragraph, layer, head, prefix_pos]`` attention weights (each row of the
            pattern sums to 1 over all keys up to the query, so prefix weights sum to <= 1).
        by_rank: ``[layer, head, rank]`` attention to the prefix tokens of rarity rank ``rank``
            (0 = the paragraph's rarest prefix token), the mean over paragraphs or their sum
            (``reduce``).
        rank_tau: ``[layer, head]`` Kendall tau between rarity rank and ``by_rank`` (the paper's
            -0.97: strongly negative = the head attends to rare tokens).
        token_tau: ``[layer, head]`` per-paragraph Kendall tau between a prefix token's log corpus
            frequency and its attention, averaged over paragraphs (the token-level variant).
        entropy: ``[layer, head]`` mean over paragraphs of the entropy (nats) of the attention over
            the prefix, renormalised to sum to 1 (the code's ``scipy.stats.entropy``): low = the
            head looks at few tokens.
        ranks, reduce: how ranks were formed (``ordinal`` / ``dense``) and pooled (``mean`` / ``sum``).
    """

    attention: Float[Tensor, "paragraph layer head prefix"] = field(repr=False)
    by_rank: Float[Tensor, "layer head rank"] = field(repr=False)
    rank_tau: Float[Tensor, "layer head"] = field(repr=False)
    token_tau: Float[Tensor, "layer head"] = field(repr=False)
    ids: list[str]
    query_position: int
    entropy: Float[Tensor, "layer head"] | None = field(default=None, repr=False)
    ranks: str = "ordinal"
    reduce: str = "mean"
    provenance: Provenance = field(default_factory=Provenance)

    def rarest_head(self) -> tuple[int, int]:
        """(layer, head) with the most negative rank-level Kendall tau: the head that attends
        most to rare tokens."""
        tau = torch.nan_to_num(self.rank_tau, nan=float("inf"))
        layer, head = divmod(int(tau.argmin()), tau.shape[1])
        return layer, head

    def to_dataframe(self) -> "pd.DataFrame":
        """One row per (layer, head): ``rank_tau``, ``token_tau`` and the attention to the rarest
        prefix token (``attention_rarest``)."""
        import pandas as pd

        L, H = self.rank_tau.shape
        df = pd.DataFrame({"layer": [l for l in range(L) for _ in range(H)], "head": list(range(H)) * L,
                           "rank_tau": self.rank_tau.flatten().tolist(), "token_tau": self.token_tau.flatten().tolist(),
                           "attention_rarest": self.by_rank[:, :, 0].flatten().tolist()})
        if self.entropy is not None:
            df["entropy"] = self.entropy.flatten().tolist()
        return df

    def token_tau_by_counts(self, paragraphs: ParagraphSet, counts: dict[str, UnigramCounts]) -> "pd.DataFrame":
        """The official code's token-level correlation: per head, the attention each token id
        receives summed over paragraphs, and Kendall's tau-b between that and the token's count
        under each of ``counts`` (e.g. ``{"full": ..., "memorized": ..., "non_memorized": ...}``),
        over the token ids that received attention and have a non-zero count there. One row per
        (layer, head), a ``tau_<name>`` column per count.

        Args:
            paragraphs: the paragraphs this result was computed on (same order).
            counts: named unigram counts.
        """
        import pandas as pd

        if list(paragraphs.ids) != self.ids:
            raise InputError("token_tau_by_counts needs the paragraphs this result was computed on")
        n, L, H, P = self.attention.shape
        toks = paragraphs.prefixes[:, :P].reshape(-1)
        vocab = int(toks.max()) + 1
        summed = torch.zeros(L, H, vocab).index_add_(2, toks, einops.rearrange(self.attention, "n l h p -> l h (n p)"))
        seen = torch.zeros(vocab, dtype=torch.bool)
        seen[toks] = True
        rows = []
        for l in range(L):
            for h in range(H):
                row: dict[str, Any] = {"layer": l, "head": h}
                for name, c in counts.items():
                    ids = (seen & (c.counts[:vocab] > 0)).nonzero().flatten()
                    row[f"tau_{name}"] = kendall_tau(c.counts[ids].tolist(), summed[l, h, ids].tolist())
                rows.append(row)
        return pd.DataFrame(rows)

    def summary(self) -> dict[str, Any]:
        """The rare-token head and its Kendall taus."""
        layer, head = self.rarest_head()
        return {"layer": layer, "head": head, "kendall_tau": round(float(self.rank_tau[layer, head]), 4),
                "token_tau": round(float(self.token_tau[layer, head]), 4), "n_paragraphs": len(self.ids)}

    def plot(self, layer: int | None = None, head: int | None = None) -> "go.Figure":
        """Mean attention per rarity rank of one head (the paper's Fig. 7 curve); default: the
        :meth:`rarest_head`."""
        from memlens.viz.heads import plot_rank_curve

        if layer is None or head is None:
            layer, head = self.rarest_head()
        return plot_rank_curve(self.by_rank[layer, head],
                               f"L{layer}H{head}: attention by rarity rank (Kendall tau {float(self.rank_tau[layer, head]):.2f})",
                               f"prefix token rarity rank (0 = rarest in the corpus; {self.ranks} ranks)",
                               f"attention from the first continuation token ({self.reduce} over paragraphs)")

def attention_to_prefix(
    model: "HookedModel", paragraphs: ParagraphSet, query_position: int | None = None, batch_size: int = 16,
    progress: bool = True,
) -> Float[Tensor, "paragraph layer head prefix"]:
    """Attention weights from ``query_position`` (default: the first continuation token, index
    ``prefix_len``) onto every prefix token, for every layer and head. Reads ``hook_pattern``
    (reading works under every bridge; only editing it does not)."""
    P = paragraphs.prefix_len
    q = P if query_position is None else query_position
    if not P <= q < paragraphs.length:
        raise InputError(f"query_position {q} must lie in the continuation [{P}, {paragraphs.length - 1}]")
    names = [f"blocks.{L}.attn.hook_pattern" for L in range(model.n_layers)]
    out = []
    for s in tqdm(range(0, len(paragraphs), batch_size), desc="attention patterns", disable=not progress, leave=False):
        chunk = paragraphs.tokens[s : s + batch_size, : q + 1].to(model.device)
        _, acts, _ = model.capture(chunk, names)
        out.append(torch.stack([acts[n][:, :, q, :P] for n in names], dim=1).float().cpu())
    return torch.cat(out)


@with_precision
def rare_token_attention(
    model: "HookedModel", paragraphs: ParagraphSet, unigram: UnigramCounts, query_position: int | None = None,
    batch_size: int = 16, progress: bool = True, ranks: RankTies = "ordinal", reduce: RankReduce = "mean",
) -> RareAttentionResult:
    """Per head: attention by prefix-token rarity rank and its Kendall tau (rank level and token
    level).

    Args:
        model: the model.
        paragraphs: the paragraphs (memorized ones, in the paper).
        unigram: corpus token counts that define rarity.
        query_position: the attending position (default: the first continuation token).
        batch_size: paragraphs per forward pass.
        progress: show a progress bar.
        ranks: ``ordinal`` or ``dense`` rarity ranks (:meth:`UnigramCounts.rarity_rank`; the
            paper's: dense).
        reduce: attention per rank averaged (``mean``) or summed (``sum``, the paper's) over
            paragraphs. :func:`paper_rare_token_setup` gives the paper's paragraphs and counts.

    Returns:
        A :class:`RareAttentionResult`.
    """
    if len(paragraphs) == 0:
        raise InputError("rare_token_attention got an empty ParagraphSet")
    if unigram.vocab_size < model.vocab_size:
        raise InputError(f"unigram counts cover {unigram.vocab_size} tokens but the model has {model.vocab_size}")
    attn = attention_to_prefix(model, paragraphs, query_position, batch_size, progress)
    n, L, H, P = attn.shape
    prefixes = paragraphs.prefixes
    rank_of = torch.stack([unigram.rarity_rank(prefixes[i], ties=ranks) for i in range(n)])  # [n, P]
    # sum each head's attention into the rarity rank of the token it lands on, over paragraphs
    flat_ranks = einops.repeat(rank_of, "n p -> l h (n p)", l=L, h=H)
    flat_attn = einops.rearrange(attn, "n l h p -> l h (n p)")
    by_rank = torch.zeros(L, H, P).scatter_add_(2, flat_ranks, flat_attn)
    if reduce == "mean":
        by_rank = by_rank / n
    elif reduce != "sum":
        raise InputError(f"unknown reduce {reduce!r}; use {one_of(RANK_REDUCES)}")
    dist = attn / attn.sum(-1, keepdim=True).clamp_min(1e-30)
    entropy = -(dist * dist.clamp_min(1e-30).log()).sum(-1).mean(0)  # [L, H]
    logf = torch.stack([unigram.log_frequency(prefixes[i]) for i in range(n)])
    rank_tau = torch.tensor([[kendall_tau(range(P), by_rank[l, h].tolist()) for h in range(H)] for l in range(L)])
    token_tau = torch.tensor([[_nanmean([kendall_tau(logf[i].tolist(), attn[i, l, h].tolist()) for i in range(n)])
                               for h in range(H)] for l in range(L)])
    q = paragraphs.prefix_len if query_position is None else query_position
    return RareAttentionResult(attention=attn, by_rank=by_rank, rank_tau=rank_tau, token_tau=token_tau,
                               ids=list(paragraphs.ids), query_position=q, entropy=entropy, ranks=ranks, reduce=reduce,
                               provenance=Provenance.capture(model, query_position=q, unigram_source=unigram.source,
                                                             ranks=ranks, reduce=reduce))


def paper_rare_token_setup(
    memorized: ParagraphSet, non_memorized: ParagraphSet, vocab_size: int, n: int = 1000,
) -> tuple[ParagraphSet, UnigramCounts]:
    """The paper's Fig. 7 inputs: the memorized then the non-memorized paragraphs, the first ``n``
    of them (the code's ``torch.cat((mem_set, nonmem_set))[:n_limit]``), and unigram counts over
    every token of both sets (prefixes and continuations). Pass them to
    :func:`rare_token_attention` with ``ranks="dense", reduce="sum"``."""
    both = memorized + non_memorized
    counts = UnigramCounts.from_paragraphs(both, vocab_size)
    counts.source = "memorized + non-memorized paragraphs"
    return both[: min(n, len(both))], counts


def _nanmean(values: list[float]) -> float:
    t = torch.tensor(values, dtype=torch.float64)
    t = t[~t.isnan()]
    return float(t.mean()) if len(t) else float("nan")
