"""GradientMap: where the gradients of (memorized) paragraphs live.

The paper's localization (Stoehr et al., 2024, Sections 5.1-5.2): gradients flow only into W_Q,
W_K, W_V, W_O per head and W_in, W_out per layer (embeddings, unembedding, biases, layer norms
frozen), and the score of a component is max |gradient| over its weights. Scores are reduced per
component as soon as a backward pass ends; the per-weight |gradient| is kept once (for masks).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor, nn

from memlens.analyses.base import Analysis
from memlens.analyses.per_example_grads import captured_linear_io, linear_owners, per_example_weight_grads
from memlens.core.progress import tqdm
from memlens.core.components import ComponentKey, ComponentRegistry, layer_of
from memlens.core.data import ParagraphSet
from memlens.core.errors import InputError
from memlens.core.results import Provenance, Result, check_same_model
from memlens.core.sparse import WeightMask
from memlens.core.objectives import continuation_logits, continuation_nll, kl_to_reference
from memlens.core.sparse import only_trainable

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from memlens.core.model import HookedModel

AGGREGATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "max": lambda g: g.abs().amax(),
    "l1": lambda g: g.abs().sum(),
    "l2": lambda g: g.pow(2).sum(),  # squared; the square root is taken over all slices
    "mean": lambda g: g.abs().sum(),  # divided by the component's size afterwards
}


def aggregate(grads: Sequence[Tensor], how: str) -> tuple[float, float]:
    """(absolute score, signed score) of one component's gradient slices.

    ``max``: max |g| and the signed entry that attains it; ``l1``: sum |g| and sum g; ``l2``:
    ||g||_2 and the same; ``mean``: mean |g| and mean g.
    """
    if how not in AGGREGATIONS:
        raise InputError(f"unknown aggregation {how!r}; choose one of {sorted(AGGREGATIONS)}")
    if how == "max":  # one |g| pass per slice; the first slice holding the largest |g| gives the sign
        found = []
        for g in grads:
            flat = g.flatten()
            mag = flat.abs()
            i = int(mag.argmax())
            found.append((float(mag[i]), float(flat[i])))
        best = max(v for v, _ in found)
        return best, next(signed for v, signed in found if v == best)
    total = sum(float(AGGREGATIONS[how](g)) for g in grads)
    signed = sum(float(g.sum()) for g in grads)
    n = sum(g.numel() for g in grads)
    if how == "l2":
        return total**0.5, total**0.5
    if how == "mean":
        return total / n, signed / n
    return total, signed


@dataclass(frozen=True, kw_only=True)
class GradientMapResult(Result):
    """Per-component gradient scores.

    Attributes:
        keys: the components, in registry order (layer, kind, head; head -1 for W_in/W_out).
        scores: aggregated |gradient| per component (units of the objective per unit weight).
        signed: the signed counterpart (see :func:`aggregate`).
        weight_grads: |gradient| of every weight of the trainable set, by parameter name (for
            masks), or the signed gradient when ``weight_grads_signed``; None when not kept.
        objective, aggregation, n_paragraphs, paragraph_ids: how it was computed.
        loss: the objective's value at the model's weights.
        label: a name for the paragraph set (``memorized``), used in tables and legends.
    """

    keys: list[ComponentKey]
    scores: Float[Tensor, " n_components"] = field(repr=False)
    signed: Float[Tensor, " n_components"] = field(repr=False)
    n_layers: int
    n_heads: int
    objective: str
    aggregation: str
    paragraph_ids: list[str]
    loss: float
    weight_grads: dict[str, Tensor] | None = field(default=None, repr=False)
    label: str = ""
    weight_grads_signed: bool = False
    provenance: Provenance = field(default_factory=Provenance)

    def summary(self) -> dict[str, Any]:
        """Objective, loss, total score and the share of it per layer."""
        return {"label": self.label, "objective": self.objective, "aggregation": self.aggregation,
                "n_paragraphs": len(self.paragraph_ids), "loss": self.loss, "total": self.total,
                "layer_profile": [round(x, 4) for x in self.layer_profile().tolist()]}

    def to_dataframe(self) -> "pd.DataFrame":
        """One row per component: ``layer, component, head, score, signed``."""
        import pandas as pd

        return pd.DataFrame({
            "layer": [k.layer for k in self.keys], "component": [k.kind for k in self.keys],
            "head": [k.head for k in self.keys], "score": self.scores.tolist(), "signed": self.signed.tolist(),
        })

    def grid(self, kind: str) -> Float[Tensor, "n_layers n_heads"]:
        """Scores of one kind as ``[layer, head]`` (``[layer, 1]`` for W_in / W_out)."""
        width = 1 if kind in ("W_in", "W_out") else self.n_heads
        out = torch.zeros(self.n_layers, width)
        for k, s in zip(self.keys, self.scores.tolist()):
            if k.kind == kind:
                out[k.layer, max(k.head, 0)] = s
        return out

    def layer_totals(self) -> Float[Tensor, " n_layers"]:
        """Sum of component scores per layer."""
        out = torch.zeros(self.n_layers)
        for k, s in zip(self.keys, self.scores.tolist()):
            out[k.layer] += s
        return out

    def layer_profile(self) -> Float[Tensor, " n_layers"]:
        """Per-layer totals normalised to sum to 1 (where in depth the gradient sits)."""
        t = self.layer_totals()
        return t / t.sum() if t.sum() > 0 else t

    @property
    def total(self) -> float:
        return float(self.scores.sum())

    def top(self, k: int = 10) -> "pd.DataFrame":
        """The ``k`` components with the highest score."""
        return self.to_dataframe().sort_values("score", ascending=False).head(k).reset_index(drop=True)

    def mask(self, fraction: float | None = None, count: int | None = None, scope: str = "global") -> WeightMask:
        """Boolean mask per parameter name selecting the weights with the largest |gradient|.

        ``fraction`` (e.g. 0.001, the paper's 0.1%) or ``count`` weights, chosen over the whole
        trainable set (``scope="global"``) or the same share in every layer (``"per_layer"``). The
        mask remembers the map's model (:class:`~memlens.core.sparse.WeightMask`): a mask of raw
        weights is refused on the processed model and the reverse.
        """
        if self.weight_grads is None:
            raise InputError("this GradientMapResult kept no per-weight gradients; compute with keep_weight_grads=True")
        if (fraction is None) == (count is None):
            raise InputError("give exactly one of fraction= or count=")
        if scope not in ("global", "per_layer"):
            raise InputError(f"unknown scope {scope!r}; use 'global' or 'per_layer'")
        total = sum(g.numel() for g in self.weight_grads.values())
        if fraction is not None:
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
                raise InputError(f"fraction must be in (0, 1], got {fraction!r}")
            count = max(1, int(round(fraction * total)))
        if not 0 < count <= total:
            raise InputError(f"count must be in 1..{total}, got {count}")
        groups: dict[Any, list[str]] = {}
        for name in self.weight_grads:
            groups.setdefault(layer_of(name) if scope == "per_layer" else 0, []).append(name)
        masks = {}
        for names in groups.values():
            flat = torch.cat([self.weight_grads[n].flatten() for n in names])
            if self.weight_grads_signed:
                flat = flat.abs()
            k = count if scope == "global" else max(1, int(round(count * flat.numel() / total)))
            k = min(k, flat.numel())
            chosen = torch.zeros(flat.numel(), dtype=torch.bool)
            chosen[flat.topk(k).indices] = True
            offset = 0
            for n in names:
                g = self.weight_grads[n]
                masks[n] = chosen[offset : offset + g.numel()].view_as(g)
                offset += g.numel()
        return WeightMask(masks, model=self.provenance.model)

    def compare(self, other: "GradientMapResult") -> "GradientMapComparison":
        """This map (e.g. memorized) against another (e.g. non-memorized): the paper's Fig. 4 / 9."""
        if self.keys != other.keys:
            raise InputError("the two maps cover different components")
        check_same_model(self.provenance.model, other.provenance.model, "the two gradient maps")
        return GradientMapComparison(a=self, b=other, provenance=self.provenance)

    def plot(self, title: str | None = None) -> "go.Figure":
        """Heatmaps of scores, one panel per kind (layers x heads), with W_in/W_out as columns."""
        from memlens.viz.gradients import plot_gradient_map

        return plot_gradient_map(self, title)

    def plot_layers(self) -> "go.Figure":
        from memlens.viz.gradients import plot_layer_profiles

        return plot_layer_profiles([self])

    def _repr_html_(self) -> str:
        return self.top(10).to_html()


@dataclass(frozen=True, kw_only=True)
class GradientMapComparison(Result):
    """Two maps side by side (e.g. memorized vs non-memorized paragraphs, the paper's Fig. 4).

    Attributes:
        a, b: the maps; their labels (``a.label``, ``b.label``) name the two sets.
    """

    a: GradientMapResult
    b: GradientMapResult
    provenance: Provenance = field(default_factory=Provenance)

    @property
    def labels(self) -> tuple[str, str]:
        la, lb = self.a.label or "a", self.b.label or "b"
        return (la, lb) if la != lb else (f"{la} (1)", f"{lb} (2)")

    def to_dataframe(self) -> "pd.DataFrame":
        """One row per component: ``layer, component, head``, each map's score
        (``score_<label>``) and their ratio."""
        la, lb = self.labels
        df = self.a.to_dataframe()[["layer", "component", "head", "score"]].rename(columns={"score": f"score_{la}"})
        df[f"score_{lb}"] = self.b.scores.tolist()
        df["ratio"] = df[f"score_{la}"] / df[f"score_{lb}"].where(df[f"score_{lb}"] > 0)
        return df

    def summary(self) -> dict[str, Any]:
        """Per set (by label): total gradient, layer profile and lower-half share; and the ratio
        of the totals (first / second)."""
        la, lb = self.labels
        return {
            "labels": [la, lb],
            "total": {la: self.a.total, lb: self.b.total},
            "ratio_total": self.a.total / self.b.total if self.b.total else float("nan"),
            "profile": {la: [round(x, 4) for x in self.a.layer_profile().tolist()],
                        lb: [round(x, 4) for x in self.b.layer_profile().tolist()]},
            "lower_half_share": {la: _lower_half(self.a.layer_profile()), lb: _lower_half(self.b.layer_profile())},
        }

    def plot(self) -> "go.Figure":
        """Share of the total gradient per layer, one line per map."""
        from memlens.viz.gradients import plot_layer_profiles

        return plot_layer_profiles([self.a, self.b], list(self.labels))


def _is_oom(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def _lower_half(profile: Tensor) -> float:
    n = len(profile)
    return round(float(profile[: n // 2].sum() + (profile[n // 2] / 2 if n % 2 else 0)), 4)


class GradientMap(Analysis):
    """Per-component gradient scores of a model on a set of paragraphs (the paper's Fig. 4 / 9).

    Example::

        gmap = GradientMap(model).run(memorized)                       # NLL objective
        cmap = GradientMap(model).run(memorized, contrast=non_memorized)   # contrastive
        gmap.top(10); gmap.plot(); gmap.mask(0.001)
    """

    DEFAULT_BATCH_SIZE = 8

    def __init__(self, model: "HookedModel", *, trainable: str = "paper", batch_size: int | None = None,
                 progress: bool = True,
                 precision: str | None = None) -> None:
        """
        Args:
            model: the model.
            trainable: ``paper`` (W_Q/W_K/W_V/W_O/W_in/W_out only) or ``all``.
            batch_size: paragraphs per backward pass (default 8; a call's own ``batch_size`` wins).
            progress: show progress bars (a call's own ``progress`` wins).
        """
        if trainable not in ("paper", "all"):
            raise InputError(f"trainable must be 'paper' (W_Q/W_K/W_V/W_O/W_in/W_out only) or 'all', got {trainable!r}")
        super().__init__(model, batch_size=batch_size, progress=progress, precision=precision)
        self.trainable = trainable

    @property
    def registry(self) -> ComponentRegistry:
        return self.model.components

    def run(
        self,
        paragraphs: ParagraphSet,
        contrast: ParagraphSet | None = None,
        objective: str | None = None,
        aggregation: str = "max",
        kl_weight: float = 1.0,
        batch_size: int | None = None,
        keep_weight_grads: bool = True,
        components: Sequence[ComponentKey | tuple] | None = None,
        progress: bool | None = None,
        label: str = "",
        signed_weight_grads: bool = False,
    ) -> GradientMapResult:
        """The gradient map of ``objective`` over ``paragraphs``.

        Args:
            paragraphs: the paragraphs whose continuation NLL is differentiated.
            contrast: non-memorized paragraphs for the contrastive objective's KL term.
            objective: ``"nll"`` (mean continuation NLL over the set) or ``"contrastive"``
                (-NLL(paragraphs) + kl_weight * KL(contrast under the model || the model's
                current weights, frozen)); default ``"contrastive"`` when ``contrast`` is given.
            aggregation: component score: ``max`` |gradient| (the paper's), ``l1``, ``l2``, ``mean``.
            kl_weight: weight of the KL term.
            batch_size: paragraphs per backward pass (halved automatically when out of memory).
            keep_weight_grads: keep |gradient| of every weight (needed for :meth:`GradientMapResult.mask`).
            components: restrict the map to these components (all by default).
            progress: show a progress bar.
            label: a name for the set (``"memorized"``), shown in tables and legends.
            signed_weight_grads: keep the signed gradient of every weight instead of its
                magnitude (for :class:`~memlens.analyses.gradient_similarity.GradientSimilarity`).

        Returns:
            A :class:`GradientMapResult` (scores in units of the objective per unit weight).
        """
        batch_size = self._batch_size(batch_size)
        progress = self._progress(progress)
        objective = objective or ("contrastive" if contrast is not None else "nll")
        self._check(paragraphs, contrast, objective, aggregation)
        keys = self._keys(components)
        ref_logits = None
        if objective == "contrastive":
            with torch.no_grad():
                ref_logits = [continuation_logits(self.model, b, contrast.prefix_len).detach()
                              for b in contrast.tokens.split(batch_size)]
        with self._trainable_params() as params:
            while True:
                try:
                    loss_total = self._accumulate(paragraphs, contrast, objective, kl_weight, ref_logits,
                                                  batch_size, progress)
                    break
                except (torch.OutOfMemoryError, RuntimeError) as e:
                    if not _is_oom(e) or batch_size == 1:
                        raise
                    for p in params.values():
                        p.grad = None
                    batch_size //= 2
                    warnings.warn(f"out of memory; retrying the gradient map with batch_size={batch_size}", stacklevel=2)
                    if ref_logits is not None:
                        ref_logits = [t for r in ref_logits for t in r.split(batch_size)]
            result = self._reduce(keys, params, aggregation, keep_weight_grads or signed_weight_grads, signed_weight_grads)
        return GradientMapResult(
            keys=keys, scores=result[0], signed=result[1], n_layers=self.model.n_layers, n_heads=self.model.n_heads,
            objective=objective, aggregation=aggregation, paragraph_ids=list(paragraphs.ids), loss=loss_total,
            weight_grads=result[2], label=label, weight_grads_signed=signed_weight_grads,
            provenance=Provenance.capture(self.model, objective=objective, aggregation=aggregation, kl_weight=kl_weight,
                                          trainable=self.trainable, n_paragraphs=len(paragraphs)),
        )

    #: the verb of earlier versions (:meth:`run`)
    compute = run

    def _accumulate(self, paragraphs: ParagraphSet, contrast: ParagraphSet | None, objective: str,
                    kl_weight: float, ref_logits: list[Tensor] | None, batch_size: int, progress: bool) -> float:
        """Forward and backward over micro-batches; gradients of the whole objective accumulate
        in ``.grad``. Returns the objective's value."""
        n = len(paragraphs)
        loss_total = 0.0
        sign = -1.0 if objective == "contrastive" else 1.0
        for s in tqdm(range(0, n, batch_size), desc=f"gradient map ({objective})", disable=not progress, leave=False):
            chunk = paragraphs.tokens[s : s + batch_size]
            nll = continuation_nll(self.model, chunk, paragraphs.prefix_len, reduction="none")
            self._check_finite(nll, paragraphs.ids[s : s + batch_size])
            loss = sign * nll.sum() / n
            loss.backward()
            loss_total += loss.item()
        if objective == "contrastive":
            m = len(contrast)
            for j, b in enumerate(contrast.tokens.split(batch_size)):
                kl = kl_to_reference(continuation_logits(self.model, b, contrast.prefix_len), ref_logits[j])
                term = kl_weight * kl * len(b) / m
                term.backward()
                loss_total += term.item()
        return loss_total

    def compute_per_paragraph(
        self, paragraphs: ParagraphSet, aggregation: str = "max", progress: bool | None = None,
        components: Sequence[ComponentKey | tuple] | None = None,
    ) -> list[GradientMapResult]:
        """One NLL map per paragraph (each paragraph's own mean continuation NLL).

        Where every component weight belongs to an ``nn.Linear`` or GPT-2 ``Conv1D`` (HuggingFace
        models under the bridge), per-paragraph weight gradients come from ONE forward and
        backward pass per batch: ``grad_W[i] = G_i^T X_i`` from each layer's input ``X_i`` and
        output gradient ``G_i``, reduced at once per component. Otherwise one backward pass per
        paragraph.
        """
        progress = self._progress(progress)
        self._check(paragraphs, None, "nll", aggregation)
        keys = self._keys(components)
        owners = linear_owners(self.model, self.registry)
        if owners is None:
            return [self.compute(paragraphs[[i]], aggregation=aggregation, keep_weight_grads=False,
                                 components=keys, progress=False)
                    for i in tqdm(range(len(paragraphs)), desc="gradient maps", disable=not progress)]
        return self._per_paragraph_linear(paragraphs, keys, owners, aggregation, progress, self.batch_size)

    # --- internals -----------------------------------------------------------------------
    def _check(self, paragraphs: ParagraphSet, contrast: ParagraphSet | None, objective: str, aggregation: str) -> None:
        if len(paragraphs) == 0:
            raise InputError("GradientMap got an empty ParagraphSet")
        if objective not in ("nll", "contrastive"):
            raise InputError(f"unknown objective {objective!r}; use 'nll' or 'contrastive'")
        if aggregation not in AGGREGATIONS:
            raise InputError(f"unknown aggregation {aggregation!r}; choose one of {sorted(AGGREGATIONS)}")
        if objective == "contrastive":
            if contrast is None or len(contrast) == 0:
                raise InputError("the contrastive objective needs a non-empty contrast set (non-memorized paragraphs)")
            paragraphs.check_compatible(contrast, "the paragraph set and its contrast set")
            contrast.validate(self.model.vocab_size, self.model.n_ctx)
        paragraphs.validate(self.model.vocab_size, self.model.n_ctx)

    def _keys(self, components: Sequence[ComponentKey | tuple] | None) -> list[ComponentKey]:
        if components is None:
            return self.registry.keys
        return [self.registry.key(*k) for k in components]

    @contextlib.contextmanager
    def _trainable_params(self) -> Iterator[dict[str, nn.Parameter]]:
        """Only the trainable set requires grad; grads start empty and are as before on exit."""
        owned = {s.param_name: s.param for c in self.registry for s in c.slices}
        with only_trainable(self.model.tl_model, None if self.trainable == "all" else owned.values()):
            yield owned

    def _reduce(self, keys: list[ComponentKey], params: dict[str, nn.Parameter], aggregation: str,
                keep: bool, signed: bool = False) -> tuple[Tensor, Tensor, dict[str, Tensor] | None]:
        scores, signed_scores = [], []
        finite = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params.values())  # one pass each
        for key in keys:
            comp = self.registry[key]
            grads = comp.grads()
            if grads is None:
                raise InputError(f"no gradient reached {key}; is the component used by the model's forward pass?")
            if not finite and any(not torch.isfinite(g).all() for g in grads):
                raise InputError(f"non-finite gradient in component {tuple(key)}; lower the inputs' scale or check the model")
            a, s = aggregate(grads, aggregation)
            scores.append(a)
            signed_scores.append(s)
        kept = {name: (p.grad.detach().clone() if signed else p.grad.detach().abs()).float()
                for name, p in params.items()} if keep else None
        return torch.tensor(scores), torch.tensor(signed_scores), kept

    def _check_finite(self, nll: Tensor, ids: list[str]) -> None:
        bad = ~torch.isfinite(nll)
        if bad.any():
            raise InputError(f"non-finite NLL for paragraph {ids[int(bad.nonzero()[0])]!r}")

    def _per_paragraph_linear(self, paragraphs: ParagraphSet, keys: list[ComponentKey], owners: dict[int, nn.Module],
                              aggregation: str, progress: bool, batch_size: int) -> list[GradientMapResult]:
        comps = [self.registry[k] for k in keys]
        results = []
        prov = Provenance.capture(self.model, objective="nll", aggregation=aggregation, per_paragraph=True)
        with self._trainable_params(), captured_linear_io(owners) as (inputs, out_grads):
            for s in tqdm(range(0, len(paragraphs), batch_size), desc="per-paragraph gradient maps",
                          disable=not progress, leave=False):
                chunk = paragraphs.tokens[s : s + batch_size]
                inputs.clear()
                out_grads.clear()
                nll = continuation_nll(self.model, chunk, paragraphs.prefix_len, reduction="none")
                self._check_finite(nll, paragraphs.ids[s : s + batch_size])
                nll.sum().backward()
                per_example = per_example_weight_grads(owners, inputs, out_grads)
                for i in range(len(chunk)):
                    sc, sg = [], []
                    for c in comps:
                        a, b = aggregate([sl.of(per_example[id(sl.param)][i]) for sl in c.slices], aggregation)
                        sc.append(a)
                        sg.append(b)
                    results.append(GradientMapResult(
                        keys=keys, scores=torch.tensor(sc), signed=torch.tensor(sg), n_layers=self.model.n_layers,
                        n_heads=self.model.n_heads, objective="nll", aggregation=aggregation,
                        paragraph_ids=[paragraphs.ids[s + i]], loss=nll[i].item(), label=paragraphs.ids[s + i],
                        provenance=prov))
                for p in self.model.tl_model.parameters():
                    p.grad = None
        return results
