"""Attention to rare tokens (Stoehr et al., 2024, Section 6): how much each head attends, from the
first continuation position, to the prefix tokens that are rare in the corpus."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import einops
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from memlens.core.data import ParagraphSet
from memlens.core.errors import InputError
from memlens.core.results import Provenance, Result
from memlens.core.stats import kendall_tau
from memlens.analyses.frequency import UnigramCounts

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
        by_rank: ``[layer, head, rank]`` mean attention to the prefix token of rarity rank ``rank``
            (0 = the paragraph's rarest prefix token).
        rank_tau: ``[layer, head]`` Kendall tau between rarity rank and ``by_rank`` (the paper's
            -0.97: strongly negative = the head attends to rare tokens).
        token_tau: ``[layer, head]`` per-paragraph Kendall tau between a prefix token's log corpus
            frequency and its attention, averaged over paragraphs (the token-level variant).
    """

    attention: Float[Tensor, "paragraph layer head prefix"] = field(repr=False)
    by_rank: Float[Tensor, "layer head rank"] = field(repr=False)
    rank_tau: Float[Tensor, "layer head"] = field(repr=False)
    token_tau: Float[Tensor, "layer head"] = field(repr=False)
    ids: list[str]
    query_position: int
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
        return pd.DataFrame({"layer": [l for l in range(L) for _ in range(H)], "head": list(range(H)) * L,
                             "rank_tau": self.rank_tau.flatten().tolist(), "token_tau": self.token_tau.flatten().tolist(),
                             "attention_rarest": self.by_rank[:, :, 0].flatten().tolist()})

    def summary(self) -> dict[str, Any]:
        """The rare-token head and its Kendall taus."""
        layer, head = self.rarest_head()
        return {"layer": layer, "head": head, "kendall_tau": round(float(self.rank_tau[layer, head]), 4),
                "token_tau": round(float(self.token_tau[layer, head]), 4), "n_paragraphs": len(self.ids)}

    def plot(self, layer: int | None = None, head: int | None = None) -> "go.Figure":
        """Mean attention per rarity rank of one head (the paper's Fig. 7 curve); default: the
        :meth:`rarest_head`."""
        import plotly.graph_objects as go

        if layer is None or head is None:
            layer, head = self.rarest_head()

        y = self.by_rank[layer, head].tolist()
        fig = go.Figure(go.Scatter(x=list(range(len(y))), y=y, mode="lines+markers"))
        fig.update_layout(title=f"L{layer}H{head}: attention by rarity rank (Kendall tau {float(self.rank_tau[layer, head]):.2f})",
                          xaxis_title="prefix token rarity rank (0 = rarest in the corpus)",
                          yaxis_title="mean attention from the first continuation token")
        return fig


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


def rare_token_attention(
    model: "HookedModel", paragraphs: ParagraphSet, unigram: UnigramCounts, query_position: int | None = None,
    batch_size: int = 16, progress: bool = True,
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
    ranks = torch.stack([unigram.rarity_rank(prefixes[i]) for i in range(n)])  # [n, P]
    # sum each head's attention into the rarity rank of the token it lands on, over paragraphs
    flat_ranks = einops.repeat(ranks, "n p -> l h (n p)", l=L, h=H)
    flat_attn = einops.rearrange(attn, "n l h p -> l h (n p)")
    by_rank = torch.zeros(L, H, P).scatter_add_(2, flat_ranks, flat_attn) / n
    logf = torch.stack([unigram.log_frequency(prefixes[i]) for i in range(n)])
    rank_tau = torch.tensor([[kendall_tau(range(P), by_rank[l, h].tolist()) for h in range(H)] for l in range(L)])
    token_tau = torch.tensor([[_nanmean([kendall_tau(logf[i].tolist(), attn[i, l, h].tolist()) for i in range(n)])
                               for h in range(H)] for l in range(L)])
    q = paragraphs.prefix_len if query_position is None else query_position
    return RareAttentionResult(attention=attn, by_rank=by_rank, rank_tau=rank_tau, token_tau=token_tau,
                               ids=list(paragraphs.ids), query_position=q,
                               provenance=Provenance.capture(model, query_position=q, unigram_source=unigram.source))


def _nanmean(values: list[float]) -> float:
    t = torch.tensor(values, dtype=torch.float64)
    t = t[~t.isnan()]
    return float(t.mean()) if len(t) else float("nan")
