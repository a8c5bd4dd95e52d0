"""Exact match (EM) and negative log-likelihood (NLL) of continuations.

The fast path is teacher forcing: under greedy decoding, EM equals the first continuation
position where ``argmax(logits)`` differs from the true token, so one batched forward pass over
prefix + true continuation gives EM and NLL together, with no decoding. Greedy decoding with a KV
cache (:func:`greedy_decode`) is the reference and shows the text a model recites.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from memlens.core.progress import tqdm

from memlens.core.compat import cache_keyword, returned_cache
from memlens.core.errors import InputError
from memlens.core.precision import with_precision

if TYPE_CHECKING:
    from memlens.core.model import HookedModel


@dataclass
class ContinuationScores:
    """Per-paragraph scores of the true continuation.

    Attributes:
        em: leading continuation tokens that greedy decoding reproduces (0..continuation_len).
        nll: mean NLL of the continuation tokens, in nats per token.
        token_nll: NLL of each continuation token, in nats.
        min_k_nll: mean NLL of the ``min_k`` fraction of tokens with the highest NLL (the
            min-K% score of Shi et al., as NLL), or None when not asked for.
        top1: the top-1 token at each continuation position, or None when not asked for.
        margin: log-probability of each continuation token minus the best other token's, in nats
            (negative where it is not top-1; near 0 = a near-tie), or None when not asked for.
    """

    em: Int[Tensor, " n"]
    nll: Float[Tensor, " n"]
    token_nll: Float[Tensor, "n continuation"]
    min_k_nll: Float[Tensor, " n"] | None = None
    top1: Int[Tensor, "n continuation"] | None = None
    margin: Float[Tensor, "n continuation"] | None = None


def exact_match_from_logits(
    logits: Float[Tensor, "batch continuation vocab"], targets: Int[Tensor, "batch continuation"]
) -> Int[Tensor, " batch"]:
    """Number of leading positions where ``argmax(logits) == targets`` (ties: lowest token id)."""
    correct = logits.argmax(dim=-1) == targets
    return correct.long().cumprod(dim=-1).sum(dim=-1)


def exact_match(generated: Int[Tensor, "batch k"], targets: Int[Tensor, "batch k"]) -> Int[Tensor, " batch"]:
    """Number of leading tokens of ``generated`` equal to ``targets``."""
    return (generated == targets).long().cumprod(dim=-1).sum(dim=-1)


def check_min_k(min_k: Any) -> None:
    """Refuse a min-K share outside (0, 1] with an :class:`InputError`."""
    if isinstance(min_k, bool) or not isinstance(min_k, (int, float)) or not 0 < min_k <= 1:
        raise InputError(f"min_k must be a share of the continuation in (0, 1] (0.2 = the 20% of tokens with the "
                         f"highest NLL), got {min_k!r}")


def score_logits(
    logits: Float[Tensor, "batch continuation vocab"],
    targets: Int[Tensor, "batch continuation"],
    min_k: float | None = None,
    predictions: bool = False,
) -> ContinuationScores:
    """EM, mean NLL and per-token NLL from the logits that predict each continuation token
    (``predictions``: also the top-1 tokens and the margins of the continuation tokens)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    token_nll = -logp.gather(-1, targets[..., None]).squeeze(-1)
    em = exact_match_from_logits(logits, targets)
    mk = None
    if min_k is not None:
        check_min_k(min_k)
        k = max(1, int(round(min_k * targets.shape[1])))
        mk = token_nll.topk(k, dim=-1).values.mean(dim=-1)
    top1 = margin = None
    if predictions:
        top1 = logits.argmax(dim=-1)
        best_other = logp.scatter(-1, targets[..., None], float("-inf")).max(dim=-1).values
        margin = -token_nll - best_other
    return ContinuationScores(em, token_nll.mean(dim=-1), token_nll, mk, top1, margin)


@torch.no_grad()
@with_precision
def teacher_forced_scores(
    model: "HookedModel",
    tokens: Int[Tensor, "n length"],
    prefix_len: int,
    batch_size: int = 16,
    min_k: float | None = None,
    progress: bool = False,
    predictions: bool = False,
) -> ContinuationScores:
    """EM and NLL of ``tokens[:, prefix_len:]`` given ``tokens[:, :prefix_len]``, in batched
    forward passes (the last token is never fed: nothing predicts past it); ``predictions``: also
    the top-1 token and the margin of each continuation token (see :class:`ContinuationScores`)."""
    if tokens.ndim != 2 or tokens.shape[1] <= prefix_len:
        raise InputError(f"need tokens [n, length] with length > prefix_len={prefix_len}, got {tuple(tokens.shape)}")
    parts: list[ContinuationScores] = []
    starts = range(0, tokens.shape[0], batch_size)
    for s in tqdm(starts, desc="teacher forcing", disable=not progress, leave=False):
        batch = tokens[s : s + batch_size].to(model.device)
        logits = model(batch[:, :-1], positions_from=prefix_len - 1)
        parts.append(score_logits(logits, batch[:, prefix_len:], min_k, predictions))
    return ContinuationScores(
        torch.cat([p.em for p in parts]).cpu(),
        torch.cat([p.nll for p in parts]).cpu(),
        torch.cat([p.token_nll for p in parts]).cpu(),
        torch.cat([p.min_k_nll for p in parts]).cpu() if min_k is not None else None,
        torch.cat([p.top1 for p in parts]).cpu() if predictions else None,
        torch.cat([p.margin for p in parts]).cpu() if predictions else None,
    )


@torch.no_grad()
@with_precision
def paragraph_min_k_nll(
    model: "HookedModel", tokens: Int[Tensor, "n length"], share: float = 0.2, batch_size: int = 16,
) -> Float[Tensor, " n"]:
    """The official code's min-K NLL (``evaluation.evaluate_nll_greedy``): the mean NLL (nats/token)
    of the ``int(share * (length - 1))`` highest-NLL tokens among all ``length - 1`` predicted
    positions of the paragraph, prefix included (for 100 tokens: the top 19 of 99). memlens's own
    ``teacher_forced_scores(min_k=)`` looks at the continuation only."""
    if not 0 < share <= 1:
        raise InputError(f"share must be a fraction in (0, 1], got {share}")
    k = max(1, int(share * (tokens.shape[1] - 1)))
    out = []
    for s in range(0, tokens.shape[0], batch_size):
        batch = tokens[s : s + batch_size].to(model.device)
        logp = F.log_softmax(model(batch[:, :-1]).float(), dim=-1)
        nll = -logp.gather(-1, batch[:, 1:, None]).squeeze(-1)
        out.append(nll.topk(k, dim=-1).values.mean(dim=-1).cpu())
    return torch.cat(out)


@torch.no_grad()
@with_precision
def greedy_decode(
    model: "HookedModel",
    prefixes: Int[Tensor, "n prefix"] | Sequence[Tensor],
    max_new_tokens: int,
    batch_size: int = 32,
    use_cache: bool = True,
    progress: bool = False,
) -> Int[Tensor, "n max_new_tokens"]:
    """Greedy (argmax) continuation of each prefix, ``max_new_tokens`` long, never stopping at EOS.

    Prefixes of different lengths are left-padded with an attention mask and explicit position
    ids, so padding changes nothing. Decoding runs in the model's plain HuggingFace twin (shared
    weights; hooks do not apply) with a KV cache, or without one (``use_cache=False``, full
    recomputation, the reference). TransformerLens 3 models decode by full recomputation.
    """
    rows = [p for p in prefixes] if not isinstance(prefixes, Tensor) else list(prefixes)
    if not rows:
        raise InputError("no prefixes to decode")
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    out = []
    for s in tqdm(range(0, len(rows), batch_size), desc="greedy decoding", disable=not progress, leave=False):
        chunk = rows[s : s + batch_size]
        if model.hf_model is None:
            out.append(_decode_tl(model, chunk, max_new_tokens))
        else:
            out.append(_decode_hf(model, chunk, max_new_tokens, use_cache))
    return torch.cat(out).cpu()


def _left_pad(rows: Sequence[Tensor], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        if len(r) == 0:
            raise InputError("cannot decode from an empty prefix")
        ids[i, width - len(r) :] = torch.as_tensor(r, device=device)
        mask[i, width - len(r) :] = 1
    return ids, mask


def _decode_hf(model: "HookedModel", rows: Sequence[Tensor], n_new: int, use_cache: bool) -> Tensor:
    plain = model.plain_model()
    cache_kw = cache_keyword(plain)
    ids, mask = _left_pad(rows, 0, model.device)
    new = []
    past = None
    step_ids = ids
    for _ in range(n_new):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        if use_cache and past is not None:
            positions = positions[:, -step_ids.shape[1] :]
        with model.autocast():
            out = plain(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=use_cache,
                **{cache_kw: past},
            )
        nxt = out.logits[:, -1].float().argmax(dim=-1, keepdim=True)
        new.append(nxt)
        mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        if use_cache:
            past = returned_cache(out)
            step_ids = nxt
        else:
            step_ids = torch.cat([step_ids, nxt], dim=1)
    return torch.cat(new, dim=1)


def _decode_tl(model: "HookedModel", rows: Sequence[Tensor], n_new: int) -> Tensor:
    result = torch.empty((len(rows), n_new), dtype=torch.long)
    by_len: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_len.setdefault(len(r), []).append(i)
    for idx in by_len.values():
        seq = torch.stack([torch.as_tensor(rows[i]) for i in idx]).to(model.device)
        for _ in range(n_new):
            nxt = model(seq)[:, -1].argmax(dim=-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
        result[idx] = seq[:, -n_new:].cpu()
    return result


@torch.no_grad()
@with_precision
def generate_then_score(
    model: "HookedModel", tokens: Int[Tensor, "n length"], prefix_len: int, batch_size: int = 16
) -> tuple[Int[Tensor, " n"], Float[Tensor, " n"]]:
    """The usual way: greedy-decode every continuation, compare, then a separate NLL pass.

    Kept as the reference and the benchmark baseline for :func:`teacher_forced_scores`.
    """
    cont_len = tokens.shape[1] - prefix_len
    generated = greedy_decode(model, tokens[:, :prefix_len], cont_len, batch_size=batch_size)
    em = exact_match(generated, tokens[:, prefix_len:])
    nll = []
    for s in range(0, tokens.shape[0], batch_size):
        batch = tokens[s : s + batch_size].to(model.device)
        logits = model(batch)[:, prefix_len - 1 : -1]
        logp = F.log_softmax(logits.float(), dim=-1)
        nll.append(-logp.gather(-1, batch[:, prefix_len:, None]).squeeze(-1).mean(-1).cpu())
    return em, torch.cat(nll)
