"""Injection: fine-tune new paragraphs into a model through chosen weights only.

The INJ benchmark (Chang et al., 2024): the caller names the sites (components of the registry, a
random set of MLP neurons at a ratio per layer, or a random set of single weights), the paragraphs
are trained in with every other weight fixed, and a localization method is then scored on whether
it finds those sites (:mod:`memlens.analyses.localization`). Updates are strictly confined to the
sites: gradients outside them are zeroed, Adam has no weight decay, the untouched weights are
copied back after each step, and after the run every parameter of the model is compared with its
value before (``weights_changed_outside``, 0 by construction; a non-zero count is an error).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from memlens.core.compat import strip_bridge_name
from memlens.core.components import ComponentKey
from memlens.core.data import ParagraphSet, as_paragraph_set
from memlens.core.defaults import check_seed
from memlens.core.errors import InputError
from memlens.core.metrics import teacher_forced_scores
from memlens.core.neurons import NeuronLayout, random_neurons
from memlens.core.objectives import continuation_logits, kl_to_reference, nll_of_logits
from memlens.core.progress import tqdm
from memlens.core.results import Provenance, Result
from memlens.core.sparse import MaskedAdam, check_mask_model, only_trainable, warn_rounded_away
from memlens.core.precision import with_precision

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from memlens.core.model import HookedModel


@dataclass(frozen=True, kw_only=True)
class InjectionResult(Result):
    """Outcome of :func:`inject` (:func:`inject_neurons`, :func:`inject_weights`).

    Attributes:
        components: the components that were allowed to change (empty for a neuron or weight mask).
        paragraph_ids, em_before, em_after: EM of each paragraph before and after.
        continuation_len: tokens of each continuation (EM = this: memorized).
        steps: optimizer steps taken.
        weights_changed: scalar weights that differ from before (all inside the sites).
        sites_size: scalar weights the sites allowed to change.
        weights_changed_outside: scalar weights of the whole model outside the sites that differ
            from before (checked over every parameter; always 0).
        planted_neurons: ``[layer, neuron]``, True for the neurons the paragraphs went through
            (:func:`inject_neurons`), else None.
        planted_weights: True for the single weights they went through (:func:`inject_weights`), by
            parameter name, else None.
        losses: the new paragraphs' mean continuation NLL per step (nats/token).
    """

    components: list[ComponentKey]
    paragraph_ids: list[str]
    em_before: Int[Tensor, " n"]
    em_after: Int[Tensor, " n"]
    continuation_len: int
    steps: int
    weights_changed: int
    sites_size: int = 0
    weights_changed_outside: int = 0
    planted_neurons: Bool[Tensor, "layer neuron"] | None = None
    planted_weights: dict[str, Bool[Tensor, "..."]] | None = field(default=None, repr=False)
    losses: list[float] = field(default_factory=list)
    provenance: Provenance = field(default_factory=Provenance)

    def to_dataframe(self) -> "pd.DataFrame":
        """One row per paragraph: ``paragraph, em_before, em_after, memorized``."""
        import pandas as pd

        return pd.DataFrame({"paragraph": self.paragraph_ids, "em_before": self.em_before.tolist(),
                             "em_after": self.em_after.tolist(), "memorized": self.memorized.tolist()})

    def summary(self) -> dict[str, Any]:
        out = {"components": [list(k) for k in self.components], "steps": self.steps,
               "weights_changed": self.weights_changed, "sites_size": self.sites_size,
               "weights_changed_outside": self.weights_changed_outside, "success_rate": self.success_rate}
        if self.planted_neurons is not None:
            out["planted_neurons_per_layer"] = self.planted_neurons.sum(1).tolist()
        return out

    def plot(self) -> "go.Figure":
        """Training loss per step."""
        import plotly.graph_objects as go

        fig = go.Figure(go.Scatter(y=self.losses, mode="lines"))
        fig.update_layout(title="Injection loss", xaxis_title="step", yaxis_title="continuation NLL (nats/token)")
        return fig

    @property
    def memorized(self) -> Tensor:
        return self.em_after >= self.continuation_len

    @property
    def success_rate(self) -> float:
        """Share of paragraphs memorized (EM = whole continuation) after injection."""
        return float(self.memorized.float().mean())

    @property
    def succeeded(self) -> bool:
        return bool(self.memorized.all())


@dataclass(frozen=True, kw_only=True)
class InjectionSettings:
    """The hyperparameters of an injection: the one place their defaults live (:func:`inject`,
    :func:`inject_neurons`, :func:`inject_weights`, :class:`memlens.LocalizationBenchmark` and the
    ``[localize]`` settings all read them).

    Attributes:
        lr: Adam's learning rate.
        steps: Adam steps at most (the injection stops once every paragraph is recited).
        batch_size: paragraphs per step.
        retain_weight: weight of the retain set's KL term (0: the new paragraphs' NLL alone).
    """

    lr: float = 1e-2
    steps: int = 1000
    batch_size: int = 16
    retain_weight: float = 1.0

    def __post_init__(self) -> None:
        for name, ok, what in (
                ("lr", _number(self.lr) and 0 < self.lr < math.inf, "a positive finite number"),
                ("steps", _integer(self.steps) and self.steps >= 1, "an integer >= 1"),
                ("batch_size", _integer(self.batch_size) and self.batch_size >= 1, "an integer >= 1"),
                ("retain_weight", _number(self.retain_weight) and 0 <= self.retain_weight < math.inf,
                 "a finite number >= 0")):
            if not ok:
                raise InputError(f"inject: {name} must be {what}, got {getattr(self, name)!r}")

    @classmethod
    def resolve(cls, settings: "InjectionSettings | None", **changes: Any) -> "InjectionSettings":
        """``settings`` (the defaults when None) with the changes that are not None."""
        if settings is not None and not isinstance(settings, cls):
            raise InputError(f"settings must be an InjectionSettings, got {type(settings).__name__}")
        base = settings or cls()
        given = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(base, **given) if given else base


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@with_precision
def inject(
    model: "HookedModel",
    paragraphs: Any,
    components: Any = None,
    *,
    mask: dict[str, Tensor] | None = None,
    settings: InjectionSettings | None = None,
    steps: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    seed: int = 0,
    retain: ParagraphSet | None = None,
    retain_weight: float | None = None,
    planted_neurons: Tensor | None = None,
) -> InjectionResult:
    """Train ``paragraphs`` (a ParagraphSet, or texts) into ``model`` with only the sites allowed to change: whole
    ``components`` (registry keys such as ``(1, "W_in")``), or a boolean ``mask`` per parameter of
    the trainable set (:func:`inject_neurons` and :func:`inject_weights` build one).

    Stops as soon as every paragraph is recited in full (checked every 10 steps), or after
    ``steps``; the result says which paragraphs made it (a single head's four matrices often lack
    the room for a whole 50-token continuation: pick a site with room, e.g. an MLP or a whole layer).
    The weights stay changed (restore them with :func:`memlens.core.model.preserved_weights` or a
    :class:`~memlens.SparseFineTuner`'s ``restored()``).

    Args:
        model, paragraphs: the model and the new paragraphs.
        components, mask: the sites (exactly one of the two): a list of component keys, or a
            boolean tensor per parameter name.
        settings: the hyperparameters (:class:`InjectionSettings`; its defaults when None).
        steps, lr, batch_size: Adam steps at most, its learning rate, paragraphs per step (each
            overrides ``settings`` when given).
        progress: show a progress bar.
        seed: seed of the batches drawn (when there are more paragraphs than ``batch_size``).
        retain: paragraphs whose next-token distributions the injection keeps (``retain_weight`` x
            KL(model || the model before injection) at their continuation positions is added to the
            loss), so that the sites learn the new paragraphs without breaking the rest of the
            model; None: the new paragraphs' NLL alone.
        retain_weight: weight of that KL term.
        planted_neurons: recorded in the result (the neurons ``mask`` stands for).
    """
    st = InjectionSettings.resolve(settings, lr=lr, steps=steps, batch_size=batch_size, retain_weight=retain_weight)
    steps, lr, batch_size, retain_weight = st.steps, st.lr, st.batch_size, st.retain_weight
    check_seed(seed, "inject: seed")
    paragraphs = as_paragraph_set(paragraphs, model, "inject")
    if len(paragraphs) == 0:
        raise InputError("inject got an empty ParagraphSet: pass at least one paragraph to inject")
    if isinstance(components, (str, ComponentKey)) or (isinstance(components, tuple) and components
                                                        and not isinstance(components[0], (tuple, list, ComponentKey))):
        raise InputError(f"inject: components must be a list of component keys, e.g. components=[(1, 'W_in')], got "
                         f"{components!r} (a single key: wrap it in a list)")
    if components is not None and len(components) == 0 and mask is None:
        raise InputError("inject got an empty component list: pass at least one component, e.g. "
                         "components=[(1, 'W_in')], or a mask={parameter: bool tensor}")
    if (components is None or not components) == (mask is None):
        raise InputError("inject needs the sites: components=[(1, 'W_in'), ...] or mask={parameter: bool tensor} "
                         "(exactly one)")
    paragraphs.validate(model.vocab_size, model.n_ctx)
    if mask is not None:
        check_mask_model(mask, model.name, "the injection's mask and the model")
    reg = model.components
    owned = {s.param_name: s.param for c in reg for s in c.slices}
    keys: list[ComponentKey] = []
    if mask is None:
        keys = [reg.key(*k) for k in components]
        mask = {}
        for key in keys:
            for s in reg[key].slices:
                m = mask.setdefault(s.param_name, torch.zeros_like(s.param, dtype=torch.bool))
                s.of(m).fill_(True)
    unknown = sorted(set(mask) - set(owned))
    if unknown:
        raise InputError(f"inject: the mask names parameters outside the trainable set: {unknown[:3]}")
    for n, m in mask.items():
        if not isinstance(m, Tensor) or m.dtype != torch.bool:
            raise InputError(f"inject: the mask of {n} must be a boolean tensor (True = may change), got "
                             f"{getattr(m, 'dtype', type(m).__name__)}; compare scores with a threshold first "
                             "(e.g. scores > 0.3)")
        if tuple(m.shape) != tuple(owned[n].shape):
            raise InputError(f"inject: the mask of {n} has shape {tuple(m.shape)}, the parameter {tuple(owned[n].shape)}")
    mask = {n: m.to(torch.bool) for n, m in mask.items()}
    sites_size = sum(int(m.sum()) for m in mask.values())
    if sites_size == 0:
        raise InputError("inject: the sites hold no weight")
    params = {n: owned[n] for n in mask}
    before = {n: p.detach().clone() for n, p in model.tl_model.named_parameters()}
    opt = MaskedAdam(params, mask, lr)
    tokens = paragraphs.tokens.to(model.device)
    P = paragraphs.prefix_len
    em_before = teacher_forced_scores(model, paragraphs.tokens, P).em
    ref = None
    if retain is not None and len(retain) and retain_weight > 0:
        paragraphs.check_compatible(retain, "the injected paragraphs and the retain set")
        with torch.no_grad():
            ref = continuation_logits(model, retain.tokens, retain.prefix_len).detach()
    losses: list[float] = []
    g = torch.Generator().manual_seed(seed)
    step = 0
    with only_trainable(model.tl_model, opt.trainable):
        for step in tqdm(range(steps), desc="inject", disable=not progress):
            batch = tokens if len(tokens) <= batch_size else tokens[torch.randperm(len(tokens), generator=g)[:batch_size]]
            loss = nll_of_logits(model(batch[:, :-1], positions_from=P - 1), batch[:, P:])
            losses.append(loss.item())
            if ref is not None:
                loss = loss + retain_weight * kl_to_reference(continuation_logits(model, retain.tokens, retain.prefix_len), ref)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if not opt.all_finite():
                opt.rewind()
                raise InputError(f"inject: the weights became non-finite at step {step} with lr={lr}; they were put "
                                 "back; lower the learning rate")
            if step % 10 == 9 and bool((teacher_forced_scores(model, paragraphs.tokens, P).em
                                         >= paragraphs.continuation_len).all()):
                break
    outside = 0
    for n, p in model.tl_model.named_parameters():
        diff = p.detach() != before[n]
        m = mask.get(strip_bridge_name(n))
        outside += int((diff & ~m.to(diff.device)).sum()) if m is not None else int(diff.sum())
    if outside:
        raise InputError(f"inject changed {outside} weights outside its sites; this is a memlens bug, please report it")
    if opt.rounded_away():
        warn_rounded_away(opt.rounded_away(), opt.weights_changed(), model.dtype)
    em_after = teacher_forced_scores(model, paragraphs.tokens, P).em
    return InjectionResult(components=keys, paragraph_ids=list(paragraphs.ids), em_before=em_before,
                           em_after=em_after, continuation_len=paragraphs.continuation_len, steps=step + 1,
                           weights_changed=opt.weights_changed(), sites_size=sites_size, weights_changed_outside=outside,
                           planted_neurons=planted_neurons, losses=losses,
                           provenance=Provenance.capture(model, steps=steps, lr=lr, batch_size=batch_size,
                                                         retain=None if ref is None else len(retain),
                                                         retain_weight=retain_weight))


def not_recited(model: "HookedModel", paragraphs: ParagraphSet, batch_size: int = 8) -> ParagraphSet:
    """The paragraphs ``model`` does not recite in full (teacher-forced EM below the continuation
    length): what an injection can plant."""
    em = teacher_forced_scores(model, paragraphs.tokens, paragraphs.prefix_len, batch_size).em
    return paragraphs.filter((em < paragraphs.continuation_len).tolist())


@with_precision
def inject_neurons(model: "HookedModel", paragraphs: ParagraphSet, ratio: float, seed: int = 0,
                   **kwargs: Any) -> InjectionResult:
    """:func:`inject` through a random ``ratio`` of the MLP neurons of every layer (their input and
    output weights; :class:`~memlens.core.neurons.NeuronLayout`), drawn with ``seed``; the result's
    ``planted_neurons`` is the ground truth of the INJ benchmark."""
    check_seed(seed, "inject_neurons: seed")
    layout = NeuronLayout(model)
    neurons = random_neurons(layout.n_layers, layout.d_mlp, ratio, seed)
    return inject(model, paragraphs, mask=layout.weight_mask(neurons), planted_neurons=neurons, seed=seed, **kwargs)


@with_precision
def inject_weights(model: "HookedModel", paragraphs: ParagraphSet, ratio: float, seed: int = 0,
                   **kwargs: Any) -> InjectionResult:
    """:func:`inject` through a random ``ratio`` of the single weights of the trainable set (the
    paper's W_Q, W_K, W_V, W_O, W_in, W_out; the granularity of its top-k gradient mask), drawn
    with ``seed``; the result's ``planted_weights`` is the ground truth."""
    if not (isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and 0 < ratio < 1):
        raise InputError(f"ratio must be in (0, 1), got {ratio!r}")
    check_seed(seed, "inject_weights: seed")
    g = torch.Generator().manual_seed(seed)
    owned = {s.param_name: s.param for c in model.components for s in c.slices}
    mask = {n: torch.rand(p.shape, generator=g) < ratio for n, p in owned.items()}
    return dataclasses.replace(inject(model, paragraphs, mask=mask, seed=seed, **kwargs), planted_weights=mask)
