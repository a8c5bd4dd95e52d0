"""Training objectives of the paper, as differentiable functions of a model's logits.

- continuation NLL: mean negative log-likelihood of the continuation tokens (nats/token);
- KL to a frozen reference over the next-token distributions of retain paragraphs, in either
  direction and with either reduction (see :func:`kl_to_reference`);
- the contrastive objective: -nll_scale * NLL(memorized) + kl_weight * KL(non-memorized, model vs
  the frozen original model). memlens's default is the paper's written formula (KL(model ||
  original), mean over positions, 1:1); the official code's is ``nll_scale=0.1``,
  ``direction="original||model"``, ``reduction="batchmean"`` (docs/paper-fidelity.md);
- negative preference optimization (NPO, Zhang et al. 2024), the unlearning baseline of the
  resurfacing literature, as a forget term: :func:`npo_loss`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from memlens.core.defaults import KL_DIRECTIONS, KL_REDUCTIONS, KLDirection, KLReduction, one_of
from memlens.core.errors import InputError

if TYPE_CHECKING:
    from memlens.core.model import HookedModel


def continuation_logits(
    model: "HookedModel", tokens: Int[Tensor, "batch length"], prefix_len: int
) -> Float[Tensor, "batch continuation vocab"]:
    """Logits that predict each continuation token (the last token is never fed)."""
    return model(tokens[:, :-1].to(model.device), positions_from=prefix_len - 1)


def continuation_nll(
    model: "HookedModel", tokens: Int[Tensor, "batch length"], prefix_len: int, reduction: str = "mean"
) -> Tensor:
    """Mean NLL of the continuation tokens over the batch (``reduction="none"``: per paragraph)."""
    return nll_of_logits(continuation_logits(model, tokens, prefix_len), tokens[:, prefix_len:], reduction)


def nll_of_logits(
    logits: Float[Tensor, "batch continuation vocab"], continuations: Int[Tensor, "batch continuation"],
    reduction: str = "mean",
) -> Tensor:
    """Mean NLL (nats/token) of ``continuations`` under the logits that predict them
    (:func:`continuation_logits`), over the batch or per paragraph (``reduction="none"``)."""
    nll = F.cross_entropy(logits.transpose(1, 2).float(), continuations.to(logits.device), reduction="none").mean(dim=-1)
    return nll.mean() if reduction == "mean" else nll


def kl_to_reference(
    logits: Float[Tensor, "batch pos vocab"], reference_logits: Float[Tensor, "batch pos vocab"],
    direction: KLDirection = "model||original", reduction: KLReduction = "mean",
) -> Tensor:
    """KL between the model's next-token distributions (``logits``) and the frozen reference's,
    in nats.

    Args:
        logits: the model's logits at the retain paragraphs' continuation positions.
        reference_logits: the frozen original model's logits at the same positions.
        direction: ``model||original`` = KL(softmax(logits) || softmax(reference_logits)) (the
            paper's formula); ``original||model`` = KL(softmax(reference) || softmax(logits)) (the
            official code: ``KLDivLoss()(log_softmax(logits), softmax(reference))``).
        reduction: ``mean`` over paragraphs and positions, or ``batchmean``: summed over positions,
            averaged over paragraphs (torch's ``batchmean`` on a ``[batch, pos, vocab]`` input).
    """
    if direction not in KL_DIRECTIONS:
        raise InputError(f"unknown KL direction {direction!r}; use {one_of(KL_DIRECTIONS)}")
    if reduction not in KL_REDUCTIONS:
        raise InputError(f"unknown KL reduction {reduction!r}; use {one_of(KL_REDUCTIONS)}")
    logp = F.log_softmax(logits.float(), dim=-1)
    logq = F.log_softmax(reference_logits.float(), dim=-1)
    if direction == "original||model":
        logp, logq = logq, logp
    per_position = (logp.exp() * (logp - logq)).sum(dim=-1)
    return per_position.mean() if reduction == "mean" else per_position.sum() / per_position.shape[0]


def sequence_nll(
    logits: Float[Tensor, "batch continuation vocab"], continuations: Int[Tensor, "batch continuation"]
) -> Float[Tensor, " batch"]:
    """NLL of each whole continuation (summed over its tokens, nats): -log p(continuation | prefix)."""
    return F.cross_entropy(logits.transpose(1, 2).float(), continuations.to(logits.device), reduction="none").sum(dim=-1)


def npo_loss(
    logits: Float[Tensor, "batch continuation vocab"], continuations: Int[Tensor, "batch continuation"],
    reference_nll: Float[Tensor, " batch"], beta: float = 0.1,
) -> Tensor:
    """The NPO forget loss of Zhang et al. (2024): ``-(2 / beta) * mean(log sigmoid(beta * (NLL_model
    - NLL_reference)))`` over the paragraphs, each NLL summed over the continuation (the official
    code's ``get_batch_loss``); ``reference_nll`` is the frozen original model's. At the original
    weights its gradient is ``-grad NLL``: gradient ascent, slowed as the NLL grows past the
    reference's."""
    margin = sequence_nll(logits, continuations) - reference_nll.to(logits.device).float()
    return -F.logsigmoid(beta * margin).mean() * 2 / beta
