"""circuitsvis views of attention heads and per-token scores (rendered offline, see
:mod:`memlens.viz.circuits`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from memlens.core.data import ParagraphSet
from memlens.core.errors import InputError
from memlens.viz.circuits import CircuitsView, ViewList, attention_heads_view, colored_tokens_view
from memlens.core.precision import with_precision

if TYPE_CHECKING:
    from memlens.analyses.activation_gradients import ActivationGradientResult
    from memlens.core.model import HookedModel
    from memlens.analyses.frequency import UnigramCounts


@with_precision
def head_views(
    model: "HookedModel", paragraphs: ParagraphSet, layer: int, head: int, paragraph: int = 0,
    unigram: "UnigramCounts | None" = None,
) -> ViewList:
    """Three views of head ``(layer, head)`` on one paragraph (prefix + first continuation token):

    1. ``AttentionHeads`` of every head of the layer, the chosen one named with a star;
    2. the prefix coloured by the chosen head's attention from the first continuation token;
    3. the prefix coloured by rarity, -log corpus frequency (when ``unigram`` is given).
    """
    if not 0 <= paragraph < len(paragraphs):
        raise InputError(f"paragraph index {paragraph} is out of range (0..{len(paragraphs) - 1})")
    from memlens.core.components import check_head

    check_head(layer, head, model.n_layers, model.n_heads)
    P = paragraphs.prefix_len
    toks = paragraphs.tokens[paragraph, : P + 1]
    name = f"blocks.{layer}.attn.hook_pattern"
    _, acts, _ = model.capture(toks[None].to(model.device), [name])
    pattern = acts[name][0].float().cpu()  # [head, dest, src]
    strs = model.to_str_tokens(toks)
    pid = paragraphs.ids[paragraph]
    names = [f"L{layer}H{h}" + (" *" if h == head else "") for h in range(model.n_heads)]
    views = ViewList([attention_heads_view(
        strs, pattern, names, title=f"Layer {layer} heads on paragraph {pid} (prefix + first continuation token)",
        caption=f"Each thumbnail is one head's attention (row: from, column: to); click one to show it. "
                f"L{layer}H{head} is starred."),
        colored_tokens_view(
        strs[:P], pattern[head, P, :P], title=f"L{layer}H{head}: attention from the first continuation token",
        caption="Darker = more attention from the first continuation token onto that prefix token.")])
    if unigram is not None:
        rarity = -unigram.log_frequency(toks[:P]).float()
        views.append(colored_tokens_view(
            strs[:P], rarity, title="Prefix tokens coloured by rarity (-log corpus frequency)",
            caption="Darker = rarer in the corpus. A memorization head's attention matches this shading."))
    return views


@with_precision
def head_attention_views(
    model: "HookedModel", paragraphs: ParagraphSet, layer: int, head: int, max_paragraphs: int = 8,
    unigram: "UnigramCounts | None" = None, batch_size: int = 16,
) -> ViewList:
    """The paper's Fig. 6 bottom / Fig. 12: one head's attention from the first continuation token
    onto the prefix, one view per paragraph (the first ``max_paragraphs``), each prefix shaded on
    the same 0..1 scale; with ``unigram``, each caption names the prefix's rarest token and the
    attention it gets. One forward pass per ``batch_size`` paragraphs, only the layer's pattern kept."""
    from memlens.core.components import check_head

    check_head(layer, head, model.n_layers, model.n_heads)
    if max_paragraphs < 1:
        raise InputError(f"max_paragraphs must be >= 1, got {max_paragraphs}")
    chosen = paragraphs[: max_paragraphs]
    if len(chosen) == 0:
        raise InputError("no paragraphs to view")
    P = chosen.prefix_len
    name = f"blocks.{layer}.attn.hook_pattern"
    rows = []
    with torch.no_grad():
        for batch in chosen.tokens[:, : P + 1].split(batch_size):
            _, acts, _ = model.capture(batch.to(model.device), [name])
            rows.append(acts[name][:, head, P, :P].float().cpu())
    attention = torch.cat(rows)
    views = ViewList()
    for i, pid in enumerate(chosen.ids):
        strs = model.to_str_tokens(chosen.tokens[i, :P])
        note = ""
        if unigram is not None:
            rarest = int(torch.argmin(unigram.log_frequency(chosen.tokens[i, :P]).float()))
            note = f" Rarest prefix token: {strs[rarest]!r} at {rarest}, attention {float(attention[i, rarest]):.2f}."
        views.append(colored_tokens_view(
            strs, attention[i], min_value=0.0, max_value=1.0,
            title=f"L{layer}H{head} on paragraph {pid}: attention from the first continuation token",
            caption=f"Darker = more attention (0..1, the same scale for every paragraph).{note}"))
    return views


@with_precision
def activation_gradient_view(
    model: "HookedModel", result: "ActivationGradientResult", paragraph: int, layer: int, head: int, kind: str = "v",
) -> CircuitsView:
    """The paragraph's tokens coloured by one head's activation gradient |dNLL/d kind|."""
    scores = result.token_scores(paragraph, layer, head, kind)
    toks = result.tokens[paragraph, : len(scores)]
    return colored_tokens_view(
        model.to_str_tokens(toks), scores, min_value=0.0, max_value=float(torch.clamp(scores.max(), min=1e-12)),
        title=f"|dNLL/d{kind}| of L{layer}H{head} per token, paragraph {result.ids[paragraph]}",
        caption="Darker = the continuation's NLL is more sensitive to this token's activation in this head.")
