"""The localizer protocol: one class per method, one verb, one result (:class:`NeuronScores`), and
the registry that names them (:func:`register_localizer`).

A localizer answers "which MLP neurons hold these paragraphs?" with a score per neuron (higher =
more implicated) and, where the method gives one, a score per weight of the trainable set. It
never changes the model's weights: :meth:`Localizer.run` compares every parameter with its value
before the call and puts it back (and says so) if a method ever did.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from memlens.analyses.base import Analysis
from memlens.analyses.localization.weight_scores import top_weight_mask
from memlens.core.data import ParagraphSet, as_paragraph_set
from memlens.core.defaults import distinct_list
from memlens.core.errors import InputError
from memlens.core.neurons import NeuronLayout, top_neurons
from memlens.core.results import Provenance, Result

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from memlens.core.model import HookedModel


@dataclass(frozen=True, kw_only=True)
class NeuronScores(Result):
    """What one localizer found.

    Attributes:
        localizer: the registered name of the method.
        neuron_scores: ``[layer, neuron]``, higher = more implicated (units are the method's own:
            |gradient|, activation, nats, attribution, mask value).
        weight_scores: a score per weight of the trainable set by parameter name (gradient
            methods), else None.
        paragraph_ids: the paragraphs localized.
        seconds: wall time of the run.
        steps: optimizer steps taken (learned masks), else 0.
        loss_trace: the training loss of each optimizer step (learned masks: the loss the method
            minimizes, in its own units, at the parameters the step started from), else empty; it
            says how far from converged a run that hit its step cap was (:func:`window_gain`).
    """

    localizer: str
    neuron_scores: Float[Tensor, "layer neuron"]
    paragraph_ids: list[str]
    seconds: float
    weight_scores: dict[str, Tensor] | None = field(default=None, repr=False)
    steps: int = 0
    loss_trace: list[float] = field(default_factory=list, repr=False)
    provenance: Provenance = field(default_factory=Provenance)

    def top(self, per_layer: Any) -> Bool[Tensor, "layer neuron"]:
        """The ``per_layer`` highest-scoring neurons of each layer (an int, or one count per layer;
        anything else is refused with an :class:`InputError`, so it is not typed here)."""
        return top_neurons(self.neuron_scores, per_layer)

    def top_weights(self, count: int) -> dict[str, Bool[Tensor, "..."]]:
        """The ``count`` highest-scoring weights over the whole trainable set, as one mask per
        parameter (the paper's top-k mask at its own granularity)."""
        if self.weight_scores is None:
            raise InputError(f"the {self.localizer} localizer gives no per-weight scores")
        return top_weight_mask(self.weight_scores, count)

    def to_dataframe(self) -> "pd.DataFrame":
        """One row per neuron: ``layer, neuron, score, rank`` (rank within its layer, 0 = top)."""
        import pandas as pd

        L, N = self.neuron_scores.shape
        order = torch.argsort(torch.argsort(-torch.nan_to_num(self.neuron_scores, nan=-float("inf")), dim=1), dim=1)
        return pd.DataFrame({"layer": torch.arange(L).repeat_interleave(N).tolist(), "neuron": torch.arange(N).repeat(L).tolist(),
                             "score": self.neuron_scores.flatten().tolist(), "rank": order.flatten().tolist()})

    def summary(self) -> dict[str, Any]:
        """The method, its time and the five top neurons of each layer."""
        top = torch.topk(torch.nan_to_num(self.neuron_scores, nan=-float("inf")), k=min(5, self.neuron_scores.shape[1]), dim=1)
        return {"localizer": self.localizer, "seconds": round(self.seconds, 2), "steps": self.steps,
                "n_paragraphs": len(self.paragraph_ids), "top_neurons": top.indices.tolist()}

    def plot(self) -> "go.Figure":
        """Layer x neuron heatmap of the scores, each layer scaled to [0, 1]."""
        from memlens.viz.localization import plot_neuron_scores

        return plot_neuron_scores(self.neuron_scores, f"{self.localizer}: neuron scores")


class Localizer(Analysis):
    """Base of the localizers: ``Localizer(model).run(paragraphs, contrast=None) -> NeuronScores``.

    A subclass sets :attr:`name` (its registered name) and implements :meth:`scores`; settings
    (penalty weights, steps, seeds) are keyword arguments of its constructor.
    """

    name: ClassVar[str] = ""
    #: whether the method needs the contrast set (e.g. non-memorized paragraphs)
    needs_contrast: ClassVar[bool] = False
    #: whether it scores single weights too (the weight-level INJ scores only those that do)
    scores_weights: ClassVar[bool] = False
    #: whether :meth:`scores` takes ``keep=`` (how many neurons per layer the caller will use) to
    #: spend less compute on the rest (the screened zero-out)
    uses_keep: ClassVar[bool] = False
    #: the loss of each optimizer step of the last :meth:`run` (learned masks append to it)
    loss_trace: list[float]

    def __init__(self, model: "HookedModel", *, batch_size: int | None = None, progress: bool = True,
                 precision: str | None = None) -> None:
        super().__init__(model, batch_size=batch_size, progress=progress, precision=precision)
        self.layout = NeuronLayout(model)
        self.loss_trace = []

    def run(self, paragraphs: ParagraphSet, *, contrast: ParagraphSet | None = None, keep: int | None = None,
            progress: bool | None = None) -> NeuronScores:
        """Score every MLP neuron (and weight, where the method can) for ``paragraphs``.

        Args:
            paragraphs: the paragraphs to localize (e.g. the injected ones).
            contrast: paragraphs the model should keep (non-memorized), for methods that use them.
            keep: how many neurons per layer the caller will take from the scores (``top(keep)``);
                a method that can save compute knowing it (:attr:`uses_keep`) scores those
                exactly and the rest approximately; the others ignore it.
            progress: show progress bars (default: the constructor's).
        """
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise InputError(f"keep is a count of neurons per layer >= 1 or None, got {keep!r}")
        paragraphs = as_paragraph_set(paragraphs, self.model, f"{self.name} localizer")
        if len(paragraphs) == 0:
            raise InputError(f"the {self.name} localizer got no paragraphs; pass at least one paragraph to localize")
        paragraphs.validate(self.model.vocab_size, self.model.n_ctx)
        if self.needs_contrast and (contrast is None or len(contrast) == 0):
            raise InputError(f"the {self.name} localizer needs contrast= paragraphs (e.g. non-memorized ones)")
        if contrast is not None:
            paragraphs.check_compatible(contrast, "the paragraphs and the contrast set")
            contrast.validate(self.model.vocab_size, self.model.n_ctx)
        before = {n: p.detach().clone() for n, p in self.model.tl_model.named_parameters()}
        self.loss_trace = []
        t0 = time.perf_counter()
        try:
            if self.uses_keep:
                neuron, weight, steps = self.scores(paragraphs, contrast, self._progress(progress), keep=keep)
            else:
                neuron, weight, steps = self.scores(paragraphs, contrast, self._progress(progress))
        finally:
            changed = [n for n, p in self.model.tl_model.named_parameters() if not torch.equal(p.detach(), before[n])]
            if changed:
                with torch.no_grad():
                    for n, p in self.model.tl_model.named_parameters():
                        p.copy_(before[n])
        if changed:
            raise InputError(f"the {self.name} localizer changed {len(changed)} parameters ({changed[:2]}); they were "
                             "put back; this is a bug in that localizer")
        return NeuronScores(localizer=self.name, neuron_scores=neuron.float().cpu(), paragraph_ids=list(paragraphs.ids),
                            seconds=time.perf_counter() - t0, weight_scores=weight, steps=steps,
                            loss_trace=list(self.loss_trace),
                            provenance=Provenance.capture(self.model, localizer=self.name, **self.settings()))

    def scores(self, paragraphs: ParagraphSet, contrast: ParagraphSet | None, progress: bool
               ) -> tuple[Tensor, dict[str, Tensor] | None, int]:
        """``(neuron scores [layer, neuron], per-weight scores or None, optimizer steps)``."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """The method's settings, recorded in the result's provenance."""
        return {}


def window_gain(trace: list[float], window: int) -> float | None:
    """The relative fall of the best loss during the last ``window`` steps of ``trace``:
    ``(best before - best in the window) / |best before|`` (0 when the window found nothing better).
    The learned masks stop when this stays below their ``tol``, so for a run that hit its step cap it
    says how far from its own criterion it stopped. None when the trace is not longer than ``window``."""
    if len(trace) <= window:
        return None
    before, last = min(trace[:-window]), min(trace[-window:])
    return max(0.0, (before - last) / abs(before)) if before != 0 else 0.0


#: name -> (class, constructor settings); :func:`register_localizer` adds to it
_REGISTRY: dict[str, tuple[type[Localizer], dict[str, Any]]] = {}


def register_localizer(name: str, cls: type[Localizer], **settings: Any) -> None:
    """Make ``cls(model, **settings)`` the localizer called ``name`` (in :func:`make_localizer`, the
    benchmark and ``[localize] localizers``). A name already taken by another class is refused."""
    if not (isinstance(name, str) and name.isidentifier()):
        raise InputError(f"a localizer name must be an identifier, got {name!r}")
    if name in _REGISTRY and _REGISTRY[name] != (cls, settings):
        raise InputError(f"a localizer {name!r} is registered already ({_REGISTRY[name][0].__name__})")
    _REGISTRY[name] = (cls, dict(settings))


def localizer_names() -> tuple[str, ...]:
    """The registered localizers, in registration order."""
    return tuple(_REGISTRY)


def check_localizer_names(names: Any) -> tuple[str, ...]:
    """``names`` as a tuple if every one is registered; an :class:`InputError` listing them otherwise."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names) \
            or not names:
        raise InputError(f"localizers must be a non-empty list of names from {', '.join(_REGISTRY)}; got {names!r}")
    unknown = [n for n in names if n not in _REGISTRY]
    if unknown:
        raise InputError(f"unknown localizer(s) {', '.join(map(repr, unknown))}; the localizers are {', '.join(_REGISTRY)}")
    distinct_list("localizers", names)
    return tuple(names)


def make_localizer(name: str, model: "HookedModel", **kwargs: Any) -> Localizer:
    """The localizer registered as ``name`` for ``model`` (``kwargs`` override its registered settings)."""
    check_localizer_names([name])
    cls, settings = _REGISTRY[name]
    import inspect

    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    known = {n for c in cls.__mro__ if "__init__" in vars(c)
             for n, p in inspect.signature(c.__init__).parameters.items() if p.kind in named} - {"self", "model"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise InputError(f"the {name} localizer has no setting(s) {', '.join(unknown)}; its settings are "
                         f"{', '.join(sorted(known))}")
    loc = cls(model, **(settings | kwargs))
    loc.name = name
    return loc


