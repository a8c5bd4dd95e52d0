"""Training only some weights: which parameters take gradients, and strictly masked Adam steps."""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import Tensor, nn


@contextlib.contextmanager
def only_trainable(module: nn.Module, trainable: Iterable[nn.Parameter] | None) -> Iterator[None]:
    """Inside the block only ``trainable`` (all parameters if None) require grad, and every
    ``.grad`` starts empty; on exit each parameter's ``requires_grad`` and ``.grad`` are as before."""
    params = list(module.parameters())
    saved = [(p.requires_grad, p.grad) for p in params]
    keep = None if trainable is None else {id(p) for p in trainable}
    try:
        for p in params:
            p.grad = None
            p.requires_grad_(keep is None or id(p) in keep)
        yield
    finally:
        for p, (flag, grad) in zip(params, saved):
            p.requires_grad_(flag)
            p.grad = grad


class MaskedAdam:
    """Adam over the masked entries of some parameters only.

    Gradients outside the masks are zeroed before each step and the weights outside them are
    copied back after it, so no weight outside a mask ever moves (the copy-back makes the guarantee
    independent of the optimizer). ``weight_decay`` is torch Adam's coupled L2 decay (``grad +=
    weight_decay * weight``, as in the paper's code), or with ``decoupled`` AdamW's decay (the
    weights shrink by ``lr * weight_decay`` each step); either reaches the masked weights only: the
    official code's decay also moved the weights its mask froze.
    """

    def __init__(self, params: dict[str, nn.Parameter], masks: dict[str, Tensor], lr: float,
                 weight_decay: float = 0.0, decoupled: bool = False) -> None:
        self.params = {n: p for n, p in params.items() if masks[n].any()}
        self.masks = {n: masks[n].to(p.device) for n, p in self.params.items()}
        self.start = {n: p.detach().clone() for n, p in self.params.items()}
        optimizer = torch.optim.AdamW if decoupled else torch.optim.Adam
        self.opt = optimizer(list(self.params.values()), lr=lr, weight_decay=weight_decay)

    @property
    def trainable(self) -> list[nn.Parameter]:
        return list(self.params.values())

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        for n, p in self.params.items():
            if p.grad is not None:
                p.grad.mul_(self.masks[n])
        self.opt.step()
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(torch.where(self.masks[n], p, self.start[n]))

    def rewind(self) -> None:
        """Put every weight back to its value when this optimizer was made."""
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.start[n])

    def all_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.params.values())

    def weights_changed(self) -> int:
        """Scalar weights that differ from their values when this optimizer was made."""
        return sum(int((p.detach() != self.start[n]).sum()) for n, p in self.params.items())
