"""Head ablation: the causal ground truth of head localization. Each head's output (``hook_z``)
is zero- or mean-ablated in turn and the memorized paragraphs' exact match re-measured; the EM a
head's ablation costs says how much the paragraphs depend on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from memlens.analyses.base import Analysis
from memlens.core.progress import tqdm

from memlens.core.components import check_head
from memlens.core.data import ParagraphSet
from memlens.core.errors import InputError
from memlens.core.results import Provenance, Result
from memlens.core.precision import with_precision

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from memlens.core.model import HookedModel

ABLATION_MODES: tuple[str, ...] = ("zero", "mean")


@dataclass(frozen=True, kw_only=True)
class HeadAblationResult(Result):
    """The EM each head's ablation costs a set of paragraphs.

    Attributes:
        em_drop: ``[layer, head]`` mean EM (tokens) of the paragraphs without ablation minus with
            the head ablated; NaN for heads not ablated.
        baseline_em: the paragraphs' mean EM without ablation (tokens).
        mode: ``zero`` (the head's z set to 0) or ``mean`` (to its mean over the paragraphs).
        paragraph_ids: the paragraphs measured.
        provenance: model, versions and the settings (mode, batch size).
    """

    em_drop: Float[Tensor, "layer head"]
    baseline_em: float
    mode: str
    paragraph_ids: list[str] = field(default_factory=list)
    provenance: Provenance = field(default_factory=Provenance)

    @property
    def n_layers(self) -> int:
        return int(self.em_drop.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.em_drop.shape[1])

    def top_head(self) -> tuple[int, int]:
        """(layer, head) whose ablation costs the most EM (NaN cells never win)."""
        flat = torch.nan_to_num(self.em_drop.flatten(), nan=-float("inf"))
        if bool(torch.isinf(flat).all()):
            raise InputError("no head was ablated")
        layer, head = divmod(int(flat.argmax()), self.n_heads)
        return layer, head

    def drop(self, layer: int, head: int) -> float:
        """EM (tokens) lost when head ``layer.head`` is ablated."""
        check_head(layer, head, self.n_layers, self.n_heads)
        return float(self.em_drop[layer, head])

    def to_dataframe(self) -> "pd.DataFrame":
        """One row per ablated head, largest drop first: ``layer, head, em_drop, em_after``."""
        import pandas as pd

        rows = [{"layer": L, "head": h, "em_drop": float(self.em_drop[L, h]),
                 "em_after": self.baseline_em - float(self.em_drop[L, h])}
                for L in range(self.n_layers) for h in range(self.n_heads) if not bool(self.em_drop[L, h].isnan())]
        df = pd.DataFrame(rows, columns=["layer", "head", "em_drop", "em_after"])
        return df.sort_values(["em_drop", "layer", "head"], ascending=[False, True, True]).reset_index(drop=True)

    def summary(self) -> dict[str, Any]:
        """The costliest head, its drop, the baseline EM and how many heads were ablated."""
        ablated = int((~self.em_drop.isnan()).sum())
        out: dict[str, Any] = {"mode": self.mode, "baseline_em": round(self.baseline_em, 3),
                               "n_paragraphs": len(self.paragraph_ids), "n_heads_ablated": ablated}
        if ablated:
            L, h = self.top_head()
            out |= {"top_head": f"L{L}H{h}", "top_em_drop": round(self.drop(L, h), 3)}
        return out

    def plot(self) -> "go.Figure":
        """Layer x head heatmap of the EM drop (blank: not ablated)."""
        from memlens.viz.heads import plot_head_grid

        return plot_head_grid(self.em_drop, f"EM lost when one head is {self.mode}-ablated "
                                            f"(baseline {self.baseline_em:.1f} tokens)", colorscale="Reds")


class HeadAblation(Analysis):
    """Ablate every head (or chosen heads) in turn and measure the EM the paragraphs lose.

    Example::

        result = HeadAblation(model).run(memorized)
        result.top_head(); result.plot()
    """

    DEFAULT_BATCH_SIZE = 16

    def __init__(self, model: "HookedModel", *, batch_size: int | None = None, progress: bool = True,
                 precision: str | None = None) -> None:
        """
        Args:
            model: the model.
            batch_size: paragraphs per forward pass (default :attr:`DEFAULT_BATCH_SIZE`).
            progress: show a progress bar over heads (a call's own ``progress`` wins).
        """
        super().__init__(model, batch_size=batch_size, progress=progress, precision=precision)

    @torch.no_grad()
    def run(self, paragraphs: ParagraphSet, *, mode: str = "zero",
            heads: Sequence[tuple[int, int]] | None = None, progress: bool | None = None) -> HeadAblationResult:
        """Ablate each head of ``heads`` (default: every head) and measure teacher-forced EM.

        Args:
            paragraphs: the paragraphs (usually the memorized ones).
            mode: ``zero`` or ``mean`` (one of :data:`ABLATION_MODES`) ablation of the head's ``hook_z``.
            heads: ``(layer, head)`` pairs to ablate; the others are NaN in the result.
            progress: show a progress bar (default: the constructor's).
        """
        from memlens.core.metrics import teacher_forced_scores

        if mode not in ABLATION_MODES:
            raise InputError(f"unknown ablation mode {mode!r}; use one of {ABLATION_MODES}")
        if len(paragraphs) == 0:
            raise InputError("head ablation needs at least one paragraph")
        model, bs = self.model, self.batch_size
        cells = [(L, h) for L in range(model.n_layers) for h in range(model.n_heads)] if heads is None else \
            [(int(L), int(h)) for L, h in heads]
        for L, h in cells:
            check_head(L, h, model.n_layers, model.n_heads)
        base = float(teacher_forced_scores(model, paragraphs.tokens, paragraphs.prefix_len, bs).em.float().mean())
        out = torch.full((model.n_layers, model.n_heads), float("nan"))
        show = self._progress(progress)
        for L, h in tqdm(cells, desc="head ablation", disable=not show):
            with model.ablate(f"blocks.{L}.attn.hook_z", head=h, mode=mode):
                em = teacher_forced_scores(model, paragraphs.tokens, paragraphs.prefix_len, bs).em.float().mean()
            out[L, h] = base - float(em)
        return HeadAblationResult(em_drop=out, baseline_em=base, mode=mode, paragraph_ids=list(paragraphs.ids),
                                  provenance=Provenance.capture(model, mode=mode, batch_size=bs,
                                                                heads=None if heads is None else [list(c) for c in cells]))


@with_precision
def head_ablation_em_drop(
    model: "HookedModel", paragraphs: ParagraphSet, mode: str = "zero", batch_size: int = 16,
    progress: bool = True, heads: Sequence[tuple[int, int]] | None = None,
) -> HeadAblationResult:
    """Causal ground truth: the EM (tokens) ``paragraphs`` lose when one head's output is zero-
    (or mean-) ablated, for every head (or only ``heads``). ``HeadAblation(model).run(...)``; the
    per-head tensor is ``.em_drop``."""
    return HeadAblation(model, batch_size=batch_size, progress=progress).run(paragraphs, mode=mode, heads=heads)
