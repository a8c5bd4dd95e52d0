"""Training only some weights: which parameters take gradients, and strictly masked Adam steps."""

from __future__ import annotations

import contextlib
import warnings
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


def warn_rounded_away(rounded: int, moved: int, dtype: torch.dtype) -> None:
    """Warn that ``rounded`` of the ``moved`` trained weights changed only in their float32 master
    copy: the model, stored in ``dtype``, computes with their old values."""
    name = str(dtype).replace("torch.", "")
    warnings.warn(f"{rounded} of the {moved} trained weights moved only in their float32 master copy: the update is "
                  f"below half a {name} step, so the {name} model computes with the old value; load float32 weights "
                  "and use precision='bf16-mixed' to train in bfloat16 without losing updates", stacklevel=4)


class WeightMask(dict):
    """A boolean tensor per parameter name (True = selected) that remembers the model it was drawn
    on (``model``: its name, ``+processed`` for processed weights), so that every analysis a mask
    enters can refuse one of another model or weight form (:func:`check_mask_model`). A plain dict
    of tensors is accepted everywhere too; it carries no model and is not checked."""

    def __init__(self, masks: dict[str, Tensor] | None = None, *, model: str = "") -> None:
        super().__init__(masks or {})
        self.model = model

    def __reduce__(self) -> tuple:
        return (type(self), (dict(self),), {"model": self.model})


def check_mask_model(mask: object, model_name: str, what: str) -> None:
    """Refuse ``mask`` (a :class:`WeightMask`, or anything with a ``provenance``) when it was drawn
    on another model or weight form than ``model_name``."""
    from memlens.core.results import check_same_model

    drawn_on = getattr(mask, "model", None)
    if drawn_on is None:
        drawn_on = getattr(getattr(mask, "provenance", None), "model", "")
    if isinstance(drawn_on, str):
        check_same_model(drawn_on, model_name, what)


class MaskedAdam:
    """Adam over the masked entries of some parameters only.

    Gradients outside the masks are zeroed before each step and the weights outside them are
    copied back after it, so no weight outside a mask ever moves (the copy-back makes the guarantee
    independent of the optimizer). ``weight_decay`` is torch Adam's coupled L2 decay (``grad +=
    weight_decay * weight``, as in the paper's code), or with ``decoupled`` AdamW's decay (the
    weights shrink by ``lr * weight_decay`` each step); either reaches the masked weights only: the
    official code's decay also moved the weights its mask froze.

    A parameter stored in low precision (bfloat16, float16) is trained through a float32 master
    copy: Adam updates the master, and the model's weight is the master rounded to the parameter's
    dtype. An update smaller than half the spacing of the stored dtype accumulates in the master
    instead of rounding away (:meth:`rounded_away` counts the masked weights whose master moved while
    the stored value did not). ``masters`` (a dict by parameter name) carries the master copies from
    one optimizer to the next: it is read on construction and written after every step.
    """

    def __init__(self, params: dict[str, nn.Parameter], masks: dict[str, Tensor], lr: float,
                 weight_decay: float = 0.0, decoupled: bool = False, masters: dict[str, Tensor] | None = None) -> None:
        self.params = {n: p for n, p in params.items() if masks[n].any()}
        self.masks = {n: masks[n].to(p.device) for n, p in self.params.items()}
        self.start = {n: p.detach().clone() for n, p in self.params.items()}
        self._shared = masters
        self.masters: dict[str, nn.Parameter] = {}
        for n, p in self.params.items():
            if p.is_floating_point() and p.dtype != torch.float32:
                kept = masters.get(n) if masters is not None else None
                value = kept if kept is not None and kept.shape == p.shape else p.detach()
                self.masters[n] = nn.Parameter(value.to(torch.float32).clone())
        self.start_masters = {n: m.detach().clone() for n, m in self.masters.items()}
        optimizer = torch.optim.AdamW if decoupled else torch.optim.Adam
        self.opt = optimizer([self.masters.get(n, p) for n, p in self.params.items()], lr=lr, weight_decay=weight_decay)

    @property
    def trainable(self) -> list[nn.Parameter]:
        return list(self.params.values())

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        for n in self.masters:
            self.params[n].grad = None

    def step(self) -> None:
        for n, p in self.params.items():
            if p.grad is not None:
                p.grad.mul_(self.masks[n])
                if n in self.masters:
                    self.masters[n].grad = p.grad.to(torch.float32)
        self.opt.step()
        with torch.no_grad():
            for n, p in self.params.items():
                if n in self.masters:
                    m = self.masters[n]
                    m.copy_(torch.where(self.masks[n], m, self.start_masters[n]))
                    p.copy_(torch.where(self.masks[n], m.to(p.dtype), self.start[n]))
                else:
                    p.copy_(torch.where(self.masks[n], p, self.start[n]))
        self._share()

    def rewind(self) -> None:
        """Put every weight (and master copy) back to its value when this optimizer was made."""
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.start[n])
            for n, m in self.masters.items():
                m.copy_(self.start_masters[n])
        self._share()

    def _share(self) -> None:
        if self._shared is not None:
            for n, m in self.masters.items():
                self._shared[n] = m.detach().clone()

    def all_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.params.values()) and \
            all(bool(torch.isfinite(m).all()) for m in self.masters.values())

    def weights_changed(self) -> int:
        """Scalar weights that differ from their values when this optimizer was made (for a
        low-precision parameter: in its float32 master copy)."""
        return sum(int((self._current(n) != self._initial(n)).sum()) for n in self.params)

    def rounded_away(self) -> int:
        """Masked weights whose float32 master copy moved while the stored low-precision weight
        kept its value (the update is still below half a step of the stored dtype); 0 for float32
        parameters."""
        return sum(int(((m.detach() != self.start_masters[n]) & (self.params[n].detach() == self.start[n])).sum())
                   for n, m in self.masters.items())

    def _current(self, name: str) -> Tensor:
        return self.masters[name].detach() if name in self.masters else self.params[name].detach()

    def _initial(self, name: str) -> Tensor:
        return self.start_masters[name] if name in self.masters else self.start[name]
