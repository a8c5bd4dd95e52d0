"""Training objectives of the paper, as differentiable functions of a model's logits.

- continuation NLL: mean negative log-likelihood of the continuation tokens (nats/token);
- KL to a frozen reference: KL(model || reference) over next-token distributions of retain
  paragraphs, averaged over positions;
- the contrastive objective: -NLL(memorized) + kl_weight * KL(non-memorized under the model ||
  the frozen original model).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

if TYPE_CHECKING:
    from memlens.core.model import HookedModel


def continuation_logits(
    model: "HookedModel", tokens: Int[Tensor, "batch length"], prefix_len: int
) -> Float[Tensor, "batch continuation vocab"]:
    """Logits that predict each continuation token (the last token is never fed)."""
    return model(tokens[:, :-1].to(model.device))[:, prefix_len - 1 :]


def continuation_nll(
    model: "HookedModel", tokens: Int[Tensor, "batch length"], prefix_len: int, reduction: str = "mean"
) -> Tensor:
    """Mean NLL of the continuation tokens over the batch (``reduction="none"``: per paragraph)."""
    logits = continuation_logits(model, tokens, prefix_len)
    targets = tokens[:, prefix_len:].to(logits.device)
    nll = F.cross_entropy(logits.transpose(1, 2).float(), targets, reduction="none").mean(dim=-1)
    return nll.mean() if reduction == "mean" else nll


def kl_to_reference(
    logits: Float[Tensor, "batch pos vocab"], reference_logits: Float[Tensor, "batch pos vocab"]
) -> Tensor:
    """Mean over batch and positions of KL(softmax(logits) || softmax(reference_logits)), in nats."""
    logp = F.log_softmax(logits.float(), dim=-1)
    logq = F.log_softmax(reference_logits.float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(dim=-1).mean()
