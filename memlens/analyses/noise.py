"""Noise intervention (the official code's ``noise intervention`` notebook): add Gaussian noise to
the weights of a mask and watch what memorized and non-memorized paragraphs lose as the noise
grows. A mask that holds the memorized paragraphs should break them at a noise that spares the
others; a random mask of the same size should not.

The noise on parameter ``W`` is drawn from N(0, (scale x std(W))^2) on the masked entries only
(the code's ``torch.std(param) * std_fac``); the model's weights are restored exactly after every
evaluation.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
from torch import Tensor, nn
from memlens.analyses.base import Analysis
from memlens.core.progress import tqdm

from memlens.analyses.sparse_mask import SparseMask
from memlens.core.data import ParagraphSet
from memlens.core.defaults import NOISE_REFERENCES, NOISE_RELATIVE_TO, NOISE_SCALES, one_of
from memlens.core.errors import InputError
from memlens.core.metrics import greedy_decode, teacher_forced_scores
from memlens.core.results import Provenance, Result
from memlens.core.sparse import check_mask_model

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from memlens.core.model import HookedModel

@dataclass(frozen=True, kw_only=True)
class NoiseResult(Result):
    """EM and NLL of two paragraph sets under growing noise on each mask's weights.

    Attributes:
        rows: one dict per (mask, scale, draw, set, paragraph): ``em`` (tokens) and ``nll``
            (nats/token) of the reference continuation with the noise added.
        mask_sizes: weights per mask.
        scales: the noise scales, in order; relative_to: ``parameter_std`` or ``absolute``.
        reference: ``greedy`` or ``true`` (:data:`memlens.core.defaults.NOISE_REFERENCES`).
        provenance: model, versions and the settings.
    """

    rows: list[dict[str, Any]]
    mask_sizes: dict[str, int]
    scales: list[float]
    relative_to: str = "parameter_std"
    reference: str = "greedy"
    provenance: Provenance = field(default_factory=Provenance)

    def to_dataframe(self) -> "pd.DataFrame":
        """One row per (mask, scale, draw, set, paragraph)."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=["mask", "scale", "draw", "set", "paragraph", "em", "nll"])

    def means(self) -> "pd.DataFrame":
        """Mean EM and NLL per (mask, scale, set), with the spread over draws (min and max of the
        per-draw means)."""
        df = self.to_dataframe()
        per_draw = df.groupby(["mask", "scale", "set", "draw"], sort=False)[["em", "nll"]].mean().reset_index()
        out = per_draw.groupby(["mask", "scale", "set"], sort=False).agg(
            em=("em", "mean"), em_min=("em", "min"), em_max=("em", "max"), nll=("nll", "mean"),
            nll_min=("nll", "min"), nll_max=("nll", "max"), draws=("draw", "nunique")).reset_index()
        return out

    def summary(self) -> dict[str, Any]:
        """Per mask: mean EM of each set at the smallest and the largest scale, and the mask size."""
        m = self.means()
        lo, hi = min(self.scales), max(self.scales)
        out: dict[str, Any] = {"scales": list(self.scales), "relative_to": self.relative_to,
                               "reference": self.reference, "masks": {}}
        for mask, size in self.mask_sizes.items():
            part = m[m["mask"] == mask]
            out["masks"][mask] = {"weights": size} | {
                f"{s}_em_at_{tag}": round(float(part[(part["set"] == s) & (part["scale"] == x)]["em"].iloc[0]), 3)
                for s in dict.fromkeys(part["set"]) for tag, x in (("min", lo), ("max", hi))}
        return out

    def plot(self) -> "go.Figure":
        """EM (markers) and NLL (dashed lines) against the noise scale, one panel per mask, one
        colour per set (the code's Fig. of the noise intervention)."""
        from memlens.viz.noise import plot_noise

        return plot_noise(self.means(), list(self.mask_sizes), self.relative_to)


class NoiseIntervention(Analysis):
    """Gaussian noise on a mask's weights, scale by scale.

    Example::

        gmap = GradientMap(model).compute(memorized, contrast=non_memorized)
        tuner = SparseFineTuner(model)
        masks = {"topk": tuner.make_mask("topk", 0.001, gmap), "random": tuner.make_mask("random", 0.001, None)}
        result = NoiseIntervention(model).run(memorized, non_memorized, masks)
        result.plot()
    """

    DEFAULT_BATCH_SIZE = 16

    def __init__(self, model: "HookedModel", *, batch_size: int | None = None, progress: bool = True,
                 precision: str | None = None) -> None:
        """
        Args:
            model: the model (its weights are changed during a run and restored bit for bit).
            batch_size: paragraphs per forward pass (default :attr:`DEFAULT_BATCH_SIZE`).
            progress: show a progress bar (a call's own ``progress`` wins).
        """
        super().__init__(model, batch_size=batch_size, progress=progress, precision=precision)

    def run(
        self, memorized: ParagraphSet, non_memorized: ParagraphSet, masks: Mapping[str, SparseMask | dict[str, Tensor]],
        scales: Sequence[float] = NOISE_SCALES, *, draws: int = 3, seed: int = 0,
        relative_to: str = "parameter_std", reference: str = "greedy", progress: bool | None = None,
    ) -> NoiseResult:
        """EM and NLL of both sets with N(0, (scale x std(W))^2) added to each mask's weights.

        Args:
            memorized, non_memorized: the two sets (the code's change and keep sets).
            masks: name -> a :class:`SparseMask` or a boolean tensor per parameter name.
            scales: noise scales (factors of each parameter's std; the code's grid is
                :data:`memlens.core.defaults.PAPER_NOISE_SCALES`).
            draws: independent noise draws per scale (the spread over draws is reported).
            seed: seed of the first draw (draw ``d`` uses ``seed + d``).
            relative_to: ``parameter_std`` (the code's) or ``absolute`` (scale is the std itself).
            reference: ``greedy`` (the model's own continuation before the noise) or ``true``.
            progress: show a progress bar (default: the constructor's).
        """
        sets = {"memorized": memorized, "non_memorized": non_memorized}
        params = self._check(sets, masks, scales, draws, relative_to, reference)
        refs = {k: self._reference(v, reference) for k, v in sets.items()}
        resolved = {name: (m.masks if isinstance(m, SparseMask) else m) for name, m in masks.items()}
        show = self._progress(progress)
        jobs = [(name, float(s), d) for name in resolved for s in scales for d in range(draws)]
        rows: list[dict[str, Any]] = []
        for name, scale, draw in tqdm(jobs, desc="noise intervention", disable=not show):
            gen = torch.Generator().manual_seed(seed + draw)
            with noised(params, resolved[name], scale, relative_to, gen):
                for set_name, ref in refs.items():
                    sc = teacher_forced_scores(self.model, ref.tokens, ref.prefix_len, self.batch_size)
                    rows += [{"mask": name, "scale": scale, "draw": draw, "set": set_name, "paragraph": pid,
                              "em": int(e), "nll": float(n)} for pid, e, n in zip(ref.ids, sc.em.tolist(), sc.nll.tolist())]
        sizes = {name: sum(int(v.sum()) for v in m.values()) for name, m in resolved.items()}
        return NoiseResult(rows=rows, mask_sizes=sizes, scales=[float(s) for s in scales], relative_to=relative_to,
                           reference=reference,
                           provenance=Provenance.capture(self.model, draws=draws, seed=seed, relative_to=relative_to,
                                                         reference=reference, batch_size=self.batch_size))

    def _check(self, sets: dict[str, ParagraphSet], masks: Mapping[str, Any], scales: Sequence[float], draws: int,
               relative_to: str, reference: str) -> dict[str, nn.Parameter]:
        if relative_to not in NOISE_RELATIVE_TO:
            raise InputError(f"relative_to must be {one_of(NOISE_RELATIVE_TO)}, got {relative_to!r}")
        if reference not in NOISE_REFERENCES:
            raise InputError(f"reference must be {one_of(NOISE_REFERENCES)}, got {reference!r}")
        if not (isinstance(draws, int) and draws >= 1):
            raise InputError(f"draws must be an integer >= 1, got {draws!r}")
        if not scales or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and 0 <= s < float("inf")
                                 for s in scales):
            raise InputError(f"scales must be finite numbers >= 0 (not booleans), got {list(scales)!r}")
        if not masks:
            raise InputError("give at least one mask")
        for name, s in sets.items():
            if len(s) == 0:
                raise InputError(f"the {name} set is empty")
            s.validate(self.model.vocab_size, self.model.n_ctx)
        params = {sl.param_name: sl.param for c in self.model.components for sl in c.slices}
        if relative_to == "parameter_std":
            widest = max(float(p.detach().float().std()) for p in params.values())
            too_big = [s for s in scales if not math.isfinite(s * widest * 4) or s * widest * 4 > torch.finfo(torch.float32).max]
        else:
            too_big = [s for s in scales if s * 4 > torch.finfo(torch.float32).max]
        if too_big:
            raise InputError(f"noise scale(s) {too_big} overflow float32 (the noise would be inf); use scales of a "
                             "few parameter stds")
        for name, m in masks.items():
            check_mask_model(m, self.model.name, f"mask {name!r} and the model noised")
            tensors = m.masks if isinstance(m, SparseMask) else m
            if not isinstance(tensors, dict):
                raise InputError(f"mask {name!r} is a {type(m).__name__}; give a SparseMask or a dict of boolean tensors")
            unknown = sorted(set(tensors) - set(params))
            if unknown:
                raise InputError(f"mask {name!r} names parameters the model does not have: {unknown[:3]}")
            for n, t in tensors.items():
                if not isinstance(t, Tensor) or t.dtype != torch.bool:
                    raise InputError(f"mask {name!r}: {n} is {getattr(t, 'dtype', type(t).__name__)}, not a boolean "
                                     "tensor; give True where the noise goes")
                if tuple(t.shape) != tuple(params[n].shape):
                    raise InputError(f"mask {name!r}: {n} has shape {tuple(t.shape)}, the parameter {tuple(params[n].shape)}")
        return params

    def _reference(self, paragraphs: ParagraphSet, reference: str) -> ParagraphSet:
        if reference == "true":
            return paragraphs
        cont = greedy_decode(self.model, paragraphs.prefixes, paragraphs.continuation_len, batch_size=self.batch_size)
        return ParagraphSet(torch.cat([paragraphs.prefixes, cont], 1), paragraphs.prefix_len,
                            paragraphs.continuation_len, paragraphs.ids)


class noised:
    """Adds N(0, (scale x std(W))^2) noise (``relative_to="absolute"``: std = scale) to the masked
    weights of ``params`` on entry; on exit (also on error or Ctrl-C) copies the saved originals back."""

    def __init__(self, params: dict[str, nn.Parameter], mask: dict[str, Tensor], scale: float, relative_to: str,
                 gen: torch.Generator) -> None:
        self.params, self.mask, self.scale, self.relative_to, self.gen = params, mask, scale, relative_to, gen
        self.saved: dict[str, Tensor] = {}

    @torch.no_grad()
    def __enter__(self) -> None:
        try:
            for n, m in self.mask.items():
                if not bool(m.any()) or self.scale == 0:
                    continue
                p = self.params[n]
                self.saved[n] = p.detach().clone()
                std = self.scale * (float(p.detach().float().std()) if self.relative_to == "parameter_std" else 1.0)
                noise = torch.randn(int(m.sum()), generator=self.gen, dtype=torch.float32) * std
                p[m.to(device=p.device, dtype=torch.bool)] += noise.to(p.dtype).to(p.device)
        except BaseException:
            self.__exit__()
            raise

    @torch.no_grad()
    def __exit__(self, *exc: Any) -> None:
        for n, original in self.saved.items():
            self.params[n].copy_(original)
