"""Hook points of a :class:`~memlens.core.model.HookedModel`: names, temporary hooks, patching,
ablation and capture of activations (and their gradients) by a names filter.

:class:`HookPoints` is the part of ``HookedModel`` that talks to TransformerLens hooks, kept apart
from loading, tokenization and precision; every helper removes its hooks on exit, also on error.
"""

from __future__ import annotations

import contextlib
import difflib
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
from jaxtyping import Int
from torch import Tensor, nn

from memlens.core.compat import hook_aliases
from memlens.core.errors import HookError, InputError

HookFn = Callable[[Tensor, Any], Tensor | None]
NamesFilter = str | Sequence[str] | Callable[[str], bool]
_Model = TypeVar("_Model", bound="HookPoints")


class HookPoints:
    """Hook-point helpers over ``self.tl_model`` (a TransformerBridge or HookedTransformer).

    Mixed into :class:`~memlens.core.model.HookedModel`, which provides the attributes below.
    """

    tl_model: Any
    name: str
    n_heads: int
    _precision: str
    # HookedModel also provides: is_bridge, forward(tokens), _check_tokens(tokens), autocast()

    @property
    def hook_names(self) -> list[str]:
        """Every hook name the model accepts (TransformerLens aliases such as ``hook_z`` included)."""
        names = set(self.tl_model.hook_dict)
        if self.is_bridge:
            names |= hook_aliases(self.tl_model)
        return sorted(names)

    def check_hook_name(self, name: str) -> str:
        """Return ``name`` if the model has that hook point, else raise a :class:`HookError`."""
        names = self._hook_name_set()
        if name not in names:
            close = difflib.get_close_matches(name, list(names), n=3)
            hint = f"; did you mean {close}?" if close else "; see HookedModel.hook_names"
            raise HookError(f"{self.name} has no hook point {name!r}{hint}")
        return name

    def _hook_name_set(self) -> set[str]:
        if not hasattr(self, "_hook_names_cache"):
            self._hook_names_cache = set(self.hook_names)
        return self._hook_names_cache

    def resolve_names(self, names_filter: NamesFilter) -> list[str]:
        """The hook names selected by a name, a list of names or a predicate."""
        if isinstance(names_filter, str):
            return [self.check_hook_name(names_filter)]
        if callable(names_filter):
            return [n for n in self.hook_names if names_filter(n)]
        return [self.check_hook_name(n) for n in names_filter]

    @contextlib.contextmanager
    def hooks(
        self: _Model, fwd_hooks: Sequence[tuple[str, HookFn]] = (), bwd_hooks: Sequence[tuple[str, HookFn]] = ()
    ) -> Iterator[_Model]:
        """Add forward/backward hooks for the duration of the block; they are removed on exit,
        also on error."""
        for name, _ in list(fwd_hooks) + list(bwd_hooks):
            self.check_hook_name(name)
        with self.tl_model.hooks(fwd_hooks=list(fwd_hooks), bwd_hooks=list(bwd_hooks)):
            yield self

    @contextlib.contextmanager
    def patch(
        self: _Model,
        name: str,
        value: Tensor | HookFn,
        head: int | None = None,
        positions: int | Sequence[int] | slice | None = None,
    ) -> Iterator[_Model]:
        """Replace an activation while the block runs.

        ``value`` is a tensor broadcastable to the selected part of the activation, or a function
        ``(activation, hook) -> activation``. ``head`` selects dim 2 of per-head activations
        (``hook_q/k/v/z``: ``[batch, pos, head, d_head]``), ``positions`` selects dim 1.
        """
        index = _activation_index(self._check_head(name, head), positions)

        def hook(act: Tensor, hook: Any) -> Tensor:
            if callable(value):
                return value(act, hook)
            act = act.clone()
            act[index] = value.to(act.device, act.dtype) if isinstance(value, Tensor) else value
            return act

        with self.hooks(fwd_hooks=[(name, hook)]):
            yield self

    @contextlib.contextmanager
    def ablate(
        self: _Model,
        name: str,
        head: int | None = None,
        positions: int | Sequence[int] | slice | None = None,
        mode: str = "zero",
    ) -> Iterator[_Model]:
        """Zero- or mean-ablate (mean over batch and position) an activation or one head of it."""
        if mode not in ("zero", "mean"):
            raise InputError(f"unknown ablation mode {mode!r}; use 'zero' or 'mean'")
        index = _activation_index(self._check_head(name, head), positions)

        def hook(act: Tensor, hook: Any) -> Tensor:
            act = act.clone()
            if mode == "zero":
                act[index] = 0.0
            else:
                act[index] = act[index].mean(dim=(0, 1), keepdim=True)
            return act

        with self.hooks(fwd_hooks=[(name, hook)]):
            yield self

    def _check_head(self, name: str, head: int | None) -> int | None:
        """``head`` if hook ``name`` has a head axis (``hook_q/k/v/z/pattern``...) and the head
        exists; a clear error for a negative head, one out of range or a hook without heads."""
        self.check_hook_name(name)
        if head is None:
            return None
        per_head = name.rsplit(".", 1)[-1] in ("hook_q", "hook_k", "hook_v", "hook_z", "hook_pattern",
                                                "hook_attn_scores", "hook_result")
        if not per_head:
            raise InputError(f"{name} has no head axis; head={head} would index another dimension (leave head=None)")
        if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < self.n_heads:
            raise InputError(f"head {head!r} is out of range for {name}: the model has heads 0..{self.n_heads - 1}")
        return head

    def capture(
        self,
        tokens: Int[Tensor, "batch pos"],
        names_filter: NamesFilter,
        loss_fn: Callable[[Tensor], Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """Run the model, keeping only the activations named by ``names_filter``.

        With ``loss_fn`` (logits -> scalar), also run the backward pass and keep the gradients of
        the loss with respect to those activations. Returns ``(output, activations, gradients)``
        where output is the loss when ``loss_fn`` is given, else the logits. Parameter gradients
        are not accumulated (they are restored as they were).
        """
        names = self.resolve_names(names_filter)
        acts: dict[str, Tensor] = {}
        grads: dict[str, Tensor] = {}

        up = self._precision != "fp32"  # bf16-mixed: activations and their gradients kept as float32

        def keep_act(act: Tensor, hook: Any) -> None:
            acts[hook.name] = act.detach().float() if up and act.is_floating_point() else act.detach()

        def keep_grad(grad: Tensor, hook: Any) -> None:
            grads[hook.name] = grad.detach().float() if up else grad.detach()

        fwd = [(n, _renamed(keep_act, n)) for n in names]
        bwd = [(n, _renamed(keep_grad, n)) for n in names] if loss_fn is not None else []
        tokens = self._check_tokens(tokens)
        with self.hooks(fwd_hooks=fwd, bwd_hooks=bwd):
            if loss_fn is None:
                with torch.no_grad():
                    return self.forward(tokens), acts, grads
            with preserved_grads(self.tl_model):
                loss = loss_fn(self.forward(tokens))
                loss.backward()
        return loss.detach(), acts, grads

    def run_with_cache(
        self, tokens: Int[Tensor, "batch pos"], names_filter: NamesFilter, **kwargs: Any
    ) -> tuple[Tensor, Any]:
        """TransformerLens ``run_with_cache`` with a required ``names_filter``: memlens never
        caches every activation by default. Returns ``(logits, ActivationCache)``."""
        names = self.resolve_names(names_filter)
        with torch.no_grad(), self.autocast():
            logits, cache = self.tl_model.run_with_cache(self._check_tokens(tokens), names_filter=names, **kwargs)
        if self._precision != "fp32":
            logits = logits.float()
            for k in list(cache.keys()):
                if cache[k].is_floating_point():
                    cache.cache_dict[k] = cache[k].float()
        return logits, cache


def _renamed(fn: Callable[[Tensor, Any], None], name: str) -> Callable[[Tensor, Any], None]:
    """Hook functions see the alias name they were registered under, not the canonical one."""

    class _Hook:
        pass

    def wrapped(t: Tensor, hook: Any) -> None:
        h = _Hook()
        h.name = name  # type: ignore[attr-defined]
        fn(t, h)

    return wrapped


def _activation_index(head: int | None, positions: int | Sequence[int] | slice | None) -> tuple:
    pos: Any = slice(None) if positions is None else positions
    if isinstance(pos, Sequence) and not isinstance(pos, slice):
        pos = list(pos)
    if head is None:
        return (slice(None), pos)
    return (slice(None), pos, head)


@contextlib.contextmanager
def preserved_grads(module: nn.Module) -> Iterator[None]:
    """Leave every parameter's ``.grad`` as it was before the block."""
    saved = {id(p): (p, p.grad) for p in module.parameters()}
    for p, _ in saved.values():
        p.grad = None
    try:
        yield
    finally:
        for p, g in saved.values():
            p.grad = g
