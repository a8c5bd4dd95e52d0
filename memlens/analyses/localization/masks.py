"""Localizers that learn which neurons to drop: Slimming (a real-valued mask, L1) and HardConcrete
(a stochastic gate, L0), as in Chang et al. (2024).

Both learn, with the model's weights frozen, a *drop* amount per neuron such that dropping makes
the model forget the target paragraphs while as few neurons as possible are dropped: the loss is
the unlikelihood of the targets' continuations, ``mean -log(1 - p(token))`` (which falls to 0 as the
model stops predicting them, so it is bounded, unlike -NLL), plus ``retain_weight`` x the mean
continuation NLL of the contrast paragraphs under the same drops (what dropping costs the text the
model should keep), plus ``penalty`` x the share of neurons dropped (L1 of the drop amounts, or the
expected L0 of the gates). A neuron's score is how strongly it is dropped. All target paragraphs go through the model as one
batch (``batch_size`` at a time when there are more), and training stops when the loss has not
improved by ``tol`` (relative) over ``patience`` steps, or after ``max_steps``. The scores are
those of the last step's mask, as in a plain training loop; ``restore_best=True`` (memlens's
variant) scores the mask of the step with the lowest loss instead, for runs whose loss spikes
before the criterion stops them (``NeuronScores.loss_trace`` shows it).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from memlens.analyses.localization.base import Localizer
from memlens.core.data import ParagraphSet
from memlens.core.errors import InputError
from memlens.core.objectives import nll_of_logits
from memlens.core.progress import tqdm

if TYPE_CHECKING:
    from memlens.core.model import HookedModel

#: HardConcrete's temperature and stretch (Louizos et al., 2018)
BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1


def unlikelihood(logits: Tensor, tokens: Tensor, prefix_len: int) -> Tensor:
    """``mean over continuation tokens of -log(1 - p(token))`` (nats), from the logits of
    ``tokens[:, :-1]``: 0 when the model gives the true tokens no probability."""
    logp = F.log_softmax(logits[:, prefix_len - 1 :].float(), dim=-1)
    lp = logp.gather(-1, tokens[:, prefix_len:, None].to(logp.device)).squeeze(-1)
    return -torch.log1p(-lp.exp().clamp(max=1 - 1e-6)).mean()


class _LearnedDrop(Localizer):
    """The shared training loop; subclasses give the gate and the penalty."""

    def __init__(self, model: "HookedModel", *, penalty: float, lr: float, retain_weight: float = 1.0,
                 max_steps: int = 400, patience: int = 50, tol: float = 1e-3, seed: int = 0,
                 batch_size: int | None = None, progress: bool = True,
                 precision: str | None = None, restore_best: Any = False) -> None:
        """``restore_best``: score the lowest-loss step's mask (True) or the last one (False); any
        other value is refused with an :class:`InputError`, so it is not typed ``bool`` here."""
        super().__init__(model, batch_size=batch_size, progress=progress, precision=precision)
        if not isinstance(restore_best, bool):
            raise InputError(f"{type(self).__name__}: restore_best is True or False, got {restore_best!r}")
        self.restore_best = restore_best
        for name, v, ok in (("penalty", penalty, isinstance(penalty, (int, float)) and 0 <= penalty < math.inf),
                            ("retain_weight", retain_weight,
                             isinstance(retain_weight, (int, float)) and 0 <= retain_weight < math.inf),
                            ("lr", lr, isinstance(lr, (int, float)) and 0 < lr < math.inf),
                            ("max_steps", max_steps, isinstance(max_steps, int) and max_steps >= 1),
                            ("patience", patience, isinstance(patience, int) and patience >= 1),
                            ("tol", tol, isinstance(tol, (int, float)) and 0 <= tol < 1)):
            if not ok or isinstance(v, bool):
                raise InputError(f"{type(self).__name__}: {name} {v!r} is out of range")
        self.penalty, self.lr, self.max_steps, self.patience, self.tol, self.seed = penalty, lr, max_steps, patience, tol, seed
        self.retain_weight = retain_weight
        self.needs_contrast = retain_weight > 0

    def init_params(self) -> Tensor:
        raise NotImplementedError

    def gates(self, params: Tensor, batch: int, generator: torch.Generator) -> Tensor:
        """Keep-gates ``[batch, layer, neuron]`` (1 = kept) for one training step."""
        raise NotImplementedError

    def sparsity(self, params: Tensor) -> Tensor:
        """The share of neurons dropped (differentiable)."""
        raise NotImplementedError

    def final_scores(self, params: Tensor) -> Tensor:
        raise NotImplementedError

    def project(self, params: Tensor) -> None:
        """Bring the parameters back into their domain after a step (nothing by default)."""

    def scores(self, paragraphs: ParagraphSet, contrast: ParagraphSet | None, progress: bool):
        from memlens.core.model import preserved_grads
        from memlens.core.sparse import only_trainable

        P = paragraphs.prefix_len
        params = self.init_params().requires_grad_(True)
        opt = torch.optim.Adam([params], lr=self.lr)
        g = torch.Generator().manual_seed(self.seed)
        best, since, step = math.inf, 0, 0
        lowest, kept = math.inf, params.detach().clone()
        chunks = [("forget", c) for c in paragraphs.tokens.split(self.batch_size)]
        if self.retain_weight > 0 and contrast is not None:
            chunks += [("retain", c) for c in contrast.tokens.split(self.batch_size)]
        sizes = {"forget": len(paragraphs), "retain": len(contrast) if contrast is not None else 1}
        bar = tqdm(range(self.max_steps), desc=f"{self.name} mask", disable=not progress, leave=False)
        with only_trainable(self.model.tl_model, []), preserved_grads(self.model.tl_model):
            for step in bar:
                opt.zero_grad()
                total = self.penalty * self.sparsity(params)
                total.backward()
                total = total.item()
                for kind, chunk in chunks:
                    chunk = chunk.to(self.model.device)
                    with self.layout.gated(self.gates(params, len(chunk), g)):
                        logits = self.model(chunk[:, :-1])
                    if kind == "forget":
                        term = unlikelihood(logits, chunk, P)
                    else:
                        term = self.retain_weight * nll_of_logits(logits[:, P - 1 :], chunk[:, P:])
                    loss = term * len(chunk) / sizes[kind]
                    loss.backward()
                    total += loss.item()
                if self.restore_best and total < lowest:
                    lowest, kept = total, params.detach().clone()
                opt.step()
                self.project(params)
                self.loss_trace.append(total)
                if total < best * (1 - self.tol):
                    best, since = total, 0
                else:
                    since += 1
                    if since >= self.patience:
                        break
        bar.close()
        return self.final_scores(kept if self.restore_best else params.detach()), None, step + 1

    def settings(self) -> dict[str, Any]:
        out = {"penalty": self.penalty, "retain_weight": self.retain_weight, "lr": self.lr, "max_steps": self.max_steps,
               "patience": self.patience, "tol": self.tol, "seed": self.seed}
        return out | ({"restore_best": True} if self.restore_best else {})


class SlimmingLocalizer(_LearnedDrop):
    """A real-valued drop amount d in [0, 1] per neuron (keep = 1 - d, starting at d = 0, projected
    back into [0, 1] after every step) with an L1 penalty on d (network slimming, Liu et al. 2017,
    turned to dropping); score = d."""

    name = "slimming"

    def __init__(self, model: "HookedModel", *, penalty: float = 10.0, lr: float = 0.05, **kwargs: Any) -> None:
        super().__init__(model, penalty=penalty, lr=lr, **kwargs)

    def init_params(self) -> Tensor:
        return torch.zeros(self.layout.n_layers, self.layout.d_mlp)

    def gates(self, params: Tensor, batch: int, generator: torch.Generator) -> Tensor:
        return (1 - params)[None].expand(batch, -1, -1)

    def sparsity(self, params: Tensor) -> Tensor:
        return params.abs().sum() / params.numel()

    def final_scores(self, params: Tensor) -> Tensor:
        return params

    def project(self, params: Tensor) -> None:
        with torch.no_grad():
            params.clamp_(0.0, 1.0)


class HardConcreteLocalizer(_LearnedDrop):
    """A stochastic drop gate per neuron (HardConcrete, Louizos et al. 2018; the best INJ localizer
    in Chang et al. 2024): ``log_alpha`` starts at ``init`` (gates nearly closed: nothing dropped),
    each step samples a gate per paragraph, and the penalty is the expected number of open drop
    gates (L0); score = log_alpha."""

    name = "hard_concrete"

    def __init__(self, model: "HookedModel", *, penalty: float = 5.0, lr: float = 0.3, init: float = -3.0,
                 **kwargs: Any) -> None:
        super().__init__(model, penalty=penalty, lr=lr, **kwargs)
        self.init = init

    def init_params(self) -> Tensor:
        return torch.full((self.layout.n_layers, self.layout.d_mlp), float(self.init))

    def gates(self, params: Tensor, batch: int, generator: torch.Generator) -> Tensor:
        u = torch.rand((batch, *params.shape), generator=generator).clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((u.log() - (1 - u).log() + params) / BETA)
        drop = (s * (ZETA - GAMMA) + GAMMA).clamp(0, 1)
        return 1 - drop

    def sparsity(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params - BETA * math.log(-GAMMA / ZETA)).sum() / params.numel()

    def final_scores(self, params: Tensor) -> Tensor:
        return params

    def settings(self) -> dict[str, Any]:
        return super().settings() | {"init": self.init}
