"""The settings and the result of one sparse fine-tuning run (:class:`memlens.SparseFineTuner`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from memlens.core.defaults import (
    FRACTION, KL_DIRECTIONS, KL_REDUCTIONS, RANDOM_MASK_DRAWS, KLDirection, KLReduction, RandomMaskDraw, one_of,
)
from memlens.core.errors import InputError
from memlens.core.results import Provenance, Result

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

#: quantile of the retain sensitivity added before division in a selective mask
SELECTIVITY_FLOOR = 0.1


@dataclass(frozen=True, kw_only=True)
class FineTuneSettings:
    """The hyperparameters of one sparse fine-tuning run (see :meth:`SparseFineTuner.unlearn`).

    memlens's defaults follow the paper's text where it fixes a value (10 steps, KL(model ||
    original)); :meth:`paper_code` gives the official code's values (docs/paper-fidelity.md).
    """

    fraction: float = FRACTION
    steps: int = 10
    lr: float = 1e-3
    kl_weight: float = 1.0
    seed: int = 0
    selectivity_floor: float = SELECTIVITY_FLOOR
    nll_scale: float = 1.0
    kl_direction: KLDirection = "model||original"
    kl_reduction: KLReduction = "mean"
    weight_decay: float = 0.0
    random_mask: RandomMaskDraw = "exact"

    @classmethod
    def paper_code(cls, **changes: Any) -> "FineTuneSettings":
        """The official code's fine-tuning (notebooks/3 editing/fine-tuning.ipynb): Adam lr 1e-5,
        coupled weight decay 1.0, 5 steps, 0.1 x NLL + KLDivLoss(batchmean)(log p_theta, p_theta0),
        Bernoulli random masks."""
        base = dict(lr=1e-5, weight_decay=1.0, steps=5, nll_scale=0.1, kl_direction="original||model",
                    kl_reduction="batchmean", random_mask="bernoulli")
        return cls(**(base | changes))

    def validate(self) -> None:
        """Refuse a setting out of range with an :class:`InputError` that names it."""
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise InputError(f"steps must be an integer >= 1, got {self.steps!r}")
        if not 0 < self.lr < float("inf"):
            raise InputError(f"lr must be a positive finite number, got {self.lr}")
        for name in ("kl_weight", "nll_scale", "weight_decay"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v < float("inf")):
                raise InputError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.kl_direction not in KL_DIRECTIONS:
            raise InputError(f"unknown kl_direction {self.kl_direction!r}; use {one_of(KL_DIRECTIONS)}")
        if self.kl_reduction not in KL_REDUCTIONS:
            raise InputError(f"unknown kl_reduction {self.kl_reduction!r}; use {one_of(KL_REDUCTIONS)}")
        if self.random_mask not in RANDOM_MASK_DRAWS:
            raise InputError(f"unknown random_mask {self.random_mask!r}; use {one_of(RANDOM_MASK_DRAWS)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class FineTuneResult(Result):
    """Before/after EM and NLL per paragraph, against the original model's own greedy continuations
    (for a memorized paragraph, its true continuation); for ``edit`` the target rows also score the
    new continuation (``em_new_*``).

    Attributes:
        objective: ``unlearn`` or ``edit``; mask_kind: ``topk``, ``selective``, ``random``, ``all`` or
            ``user``.
        rows: one dict per (set, paragraph): set (``target``, ``other_memorized``, ``retain``),
            paragraph, em_before, em_after, nll_before, nll_after; also ``top1_changed`` (continuation
            positions whose teacher-forced top-1 token differs from the original model's) and
            ``min_margin`` (the original model's smallest log-probability lead of the reference
            token over the best other token, in nats; near 0 = a near-tie that any weight change
            can flip, and with it every later token of EM).
        weights_changed: scalar weights that differ from the tuner's original weights after the run
            (cumulative over runs not separated by ``restore()``).
        mask_size: weights the mask allowed to change.
        losses: objective per step.
    """

    objective: str
    mask_kind: str
    rows: list[dict[str, Any]]
    weights_changed: int
    mask_size: int
    losses: list[float] = field(default_factory=list)
    provenance: Provenance = field(default_factory=Provenance)

    def to_dataframe(self) -> "pd.DataFrame":
        """One row per (set, paragraph), the columns of :attr:`rows`."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    def mean(self, set_name: str, column: str = "em_after") -> float:
        vals = [r[column] for r in self.rows if r["set"] == set_name]
        return float(sum(vals) / len(vals)) if vals else float("nan")

    def summary(self) -> dict[str, Any]:
        """Mean EM and NLL before/after and top-1 moves per set, mask size and weights changed (and for
        ``edit``, the new continuation's EM and the share of targets that reach EM >= 40)."""
        out: dict[str, Any] = {"objective": self.objective, "mask": self.mask_kind,
                               "mask_size": self.mask_size, "weights_changed": self.weights_changed}
        for s in ("target", "other_memorized", "retain"):
            out[f"{s}_em_before"] = self.mean(s, "em_before")
            out[f"{s}_em_after"] = self.mean(s, "em_after")
            out[f"{s}_top1_changed"] = self.mean(s, "top1_changed")
            out[f"{s}_nll_before"] = self.mean(s, "nll_before")
            out[f"{s}_nll_after"] = self.mean(s, "nll_after")
        if self.objective == "edit":
            out["target_em_new_after"] = self.mean("target", "em_new_after")
            df = self.to_dataframe()
            out["target_edit_success"] = float((df[df["set"] == "target"]["em_new_after"] >= 40).mean())
        return out

    def plot(self) -> "go.Figure":
        """Loss per step and mean EM before/after per set."""
        from memlens.viz.unlearning import plot_finetune

        return plot_finetune(self)

    def _repr_html_(self) -> str:
        return self.to_dataframe().to_html(index=False)
