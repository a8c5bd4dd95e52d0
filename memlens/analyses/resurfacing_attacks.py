"""The attacks of the resurfacing audit (:class:`memlens.ResurfacingAudit`), each run on a model whose
weights hold an unlearned state and each leaving them as it found them.

- :func:`relearn`: fine-tune every weight of the trainable set on some paragraphs (Adam, the mean
  continuation NLL), scoring other paragraphs after given step counts: relearning half of an
  unlearned group and measuring the other half (Deeb & Roger 2024), or fine-tuning on unrelated
  paragraphs (Łucki et al. 2024).
- :func:`quantized_scores`: round-to-nearest quantization of the trainable weights
  (:mod:`memlens.core.quantize`; Zhang et al., ICLR 2025), and how many of the unlearning's weight
  changes are smaller than half a quantization bin.
- :func:`prefix_variants`: perturbed, shortened and lengthened prefixes (Huang et al. 2024; the
  paper's prefix perturbation): the best EM over the variants.
- :func:`noised_scores`: Gaussian noise on the unlearning mask's weights (the paper's noise
  intervention), the best EM over draws.

And :func:`relearn_localization`, how relearning's weight changes relate to the unlearning's.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from jaxtyping import Int
from torch import Tensor, nn

from memlens.core.data import ParagraphSet
from memlens.core.metrics import teacher_forced_scores
from memlens.core.objectives import nll_of_logits
from memlens.core.quantize import QuantScheme, quantize_dequantize
from memlens.core.sparse import MaskedAdam, only_trainable

if TYPE_CHECKING:
    from memlens.core.model import HookedModel

Scores = dict[str, list[int]]


def exact_match(model: "HookedModel", paragraphs: ParagraphSet, batch_size: int) -> list[int]:
    """Teacher-forced EM of each paragraph's true continuation (tokens, 0..continuation_len)."""
    if len(paragraphs) == 0:
        return []
    return teacher_forced_scores(model, paragraphs.tokens, paragraphs.prefix_len, batch_size).em.tolist()


def relearn(
    model: "HookedModel", params: dict[str, nn.Parameter], train: ParagraphSet, score: dict[str, ParagraphSet],
    steps: Sequence[int], lr: float, batch_size: int, seed: int,
) -> tuple[dict[int, Scores], dict[str, Tensor]]:
    """Fine-tune ``params`` (every entry of them) on ``train`` for ``max(steps)`` Adam steps; after
    each step count in ``steps``, the EM of every set of ``score``. The weights are left changed
    (the caller puts them back); returns the scores by step count and the weights' change
    (relearned - start) by parameter name."""
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
    opt = MaskedAdam(params, masks, lr)
    start = {n: p.detach().clone() for n, p in params.items()}
    gen = torch.Generator().manual_seed(seed)
    tokens, P = train.tokens.to(model.device), train.prefix_len
    out: dict[int, Scores] = {}
    with only_trainable(model.tl_model, opt.trainable):
        for step in range(1, max(steps) + 1):
            batch = tokens if len(tokens) <= batch_size else tokens[torch.randperm(len(tokens), generator=gen)[:batch_size]]
            loss = nll_of_logits(model(batch[:, :-1], positions_from=P - 1), batch[:, P:])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step in steps:
                out[step] = {k: exact_match(model, s, batch_size) for k, s in score.items()}
    delta = {n: (opt.masters[n].detach() if n in opt.masters else p.detach()).float() - start[n].float()
             for n, p in params.items()}
    return out, delta


def quantize_weights(params: dict[str, nn.Parameter], transposed: set[str], scheme: QuantScheme) -> dict[str, Tensor]:
    """Replace every weight of ``params`` (2-D, ``[out, in]``; ``transposed`` names the ``[in, out]``
    ones, GPT-2's Conv1D) by its RTN quantize-dequantize, in place; returns each element's bin width."""
    steps = {}
    with torch.no_grad():
        for n, p in params.items():
            w = p.detach().t() if n in transposed else p.detach()
            deq, step = quantize_dequantize(w, scheme)
            p.copy_(deq.t() if n in transposed else deq)
            steps[n] = step.t() if n in transposed else step
    return steps


def below_half_bin(changed: dict[str, Tensor], delta: dict[str, Tensor], steps: dict[str, Tensor]) -> tuple[int, int]:
    """Of the weights the unlearning changed, how many changed by less than half their
    quantization bin (``(count, changed)``)."""
    below = total = 0
    for n, c in changed.items():
        if n in steps and bool(c.any()):
            total += int(c.sum())
            below += int((delta[n][c].abs() < steps[n].to(delta[n].device)[c] / 2).sum())
    return below, total


def shortened(paragraphs: ParagraphSet, keep: int) -> ParagraphSet:
    """The paragraphs with only the last ``keep`` prefix tokens."""
    P = paragraphs.prefix_len
    return ParagraphSet(paragraphs.tokens[:, P - keep:], keep, paragraphs.continuation_len, paragraphs.ids)


def lengthened(paragraphs: ParagraphSet, extra: Int[Tensor, " extra"]) -> ParagraphSet:
    """The paragraphs with ``extra`` tokens before their prefix (the same context for all)."""
    lead = extra[None].expand(len(paragraphs), -1)
    return ParagraphSet(torch.cat([lead, paragraphs.tokens], 1), paragraphs.prefix_len + len(extra),
                        paragraphs.continuation_len, paragraphs.ids)


def perturbed(paragraphs: ParagraphSet, n: int, vocab_size: int, gen: torch.Generator) -> list[ParagraphSet]:
    """``n`` copies of the paragraphs, each with one prefix token (position and token drawn
    uniformly, the token never the original) replaced."""
    out = []
    P = paragraphs.prefix_len
    for _ in range(n):
        tokens = paragraphs.tokens.clone()
        pos = torch.randint(0, P, (len(paragraphs),), generator=gen)
        rows = torch.arange(len(paragraphs))
        draw = torch.randint(0, vocab_size - 1, (len(paragraphs),), generator=gen)
        orig = tokens[rows, pos]
        tokens[rows, pos] = draw + (draw >= orig).long()
        out.append(ParagraphSet(tokens, P, paragraphs.continuation_len, paragraphs.ids))
    return out


def prefix_variants(
    model: "HookedModel", targets: ParagraphSet, lengths: Sequence[int], extra: Tensor, n_perturbed: int,
    batch_size: int, gen: torch.Generator,
) -> dict[str, list[int]]:
    """EM of the targets under each prefix variant: ``perturbed`` (the best of ``n_perturbed``
    single-token replacements), ``short-<k>`` (the last k prefix tokens), ``long-<m>`` (m tokens of
    context before the prefix), and ``best`` over all of them."""
    out: dict[str, list[int]] = {}
    if n_perturbed:
        ems = [exact_match(model, v, batch_size) for v in perturbed(targets, n_perturbed, model.vocab_size, gen)]
        out["perturbed"] = [max(col) for col in zip(*ems)]
    for k in lengths:
        if 0 < k < targets.prefix_len:
            out[f"short-{k}"] = exact_match(model, shortened(targets, k), batch_size)
    if len(extra) and (model.n_ctx is None or targets.tokens.shape[1] + len(extra) <= model.n_ctx):
        out[f"long-{len(extra)}"] = exact_match(model, lengthened(targets, extra.cpu()), batch_size)
    if out:
        out["best"] = [max(col) for col in zip(*out.values())]
    return out


def noised_scores(
    model: "HookedModel", params: dict[str, nn.Parameter], mask: dict[str, Tensor], targets: ParagraphSet,
    scales: Sequence[float], draws: int, seed: int, batch_size: int, noised: Callable[..., Any],
) -> dict[str, list[int]]:
    """The targets' best EM over ``draws`` noise draws at each scale (``scale-<s>``), the noise
    N(0, (s x std(W))^2) added to the masked weights only (``noised``: the noise intervention's
    context manager, which puts the weights back)."""
    out = {}
    for s in scales:
        best = [0] * len(targets)
        for d in range(draws):
            gen = torch.Generator().manual_seed(seed + d)
            with noised(params, mask, float(s), "parameter_std", gen):
                best = [max(a, b) for a, b in zip(best, exact_match(model, targets, batch_size))]
        out[f"scale-{s:g}"] = best
    return out


def relearn_localization(before: dict[str, Tensor], after: dict[str, Tensor], changed: dict[str, Tensor],
                         unlearn_delta: dict[str, Tensor], relearn_delta: dict[str, Tensor]) -> dict[str, float]:
    """How relearning relates to where the paragraphs were localized and unlearned: the Jaccard of
    V's top gradient masks before unlearning and after relearning; over the weights the unlearning
    changed, the share that relearning moved back (opposite sign) and the cosine between
    relearning's change and the unlearning's undoing; relearning's L1 mass inside those weights
    against their share of the weights (enrichment)."""
    inter = sum(int((before[n] & after[n]).sum()) for n in before)
    union = sum(int((before[n] | after[n]).sum()) for n in before)
    moved = back = 0
    dot = nu = nr = 0.0
    mass_in = mass = 0.0
    n_changed = n_all = 0
    for n, c in changed.items():
        r, u = relearn_delta[n], unlearn_delta[n]
        mass += float(r.abs().sum())
        n_all += c.numel()
        if not bool(c.any()):
            continue
        rc, uc = r[c], u[c]
        n_changed += int(c.sum())
        mass_in += float(rc.abs().sum())
        moved += int((rc != 0).sum())
        back += int(((rc * uc) < 0).sum())
        dot += float((rc * -uc).sum())
        nu += float(uc.square().sum())
        nr += float(rc.square().sum())
    share = n_changed / n_all if n_all else float("nan")
    return {"jaccard_before_vs_relearned": inter / union if union else float("nan"),
            "moved_back_share": back / moved if moved else float("nan"),
            "cosine_relearn_vs_undo": dot / math.sqrt(nu * nr) if nu > 0 and nr > 0 else float("nan"),
            "relearn_mass_in_mask": mass_in / mass if mass > 0 else float("nan"),
            "mask_share": share,
            "enrichment": (mass_in / mass) / share if mass > 0 and share > 0 else float("nan")}
