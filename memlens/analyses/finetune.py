"""The settings and the result of one sparse fine-tuning run (:class:`memlens.SparseFineTuner`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from memlens.core.defaults import (
    DECAY_MODES, FORGET_LOSSES, FRACTION, ForgetLoss, KL_DIRECTIONS, KL_REDUCTIONS, RANDOM_MASK_DRAWS, SELECTIVITY_FLOOR, KLDirection, KLReduction,
    SEED_REQUIREMENT, DecayMode, RandomMaskDraw, one_of, seed_problem,
)
from memlens.core.errors import InputError
from memlens.core.results import Provenance, Result

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

#: what a fine-tuning setting must be, by name: (test, requirement); the one place these are checked
_REQUIREMENTS: dict[str, tuple[Any, str]] = {
    "fraction": (lambda v: _number(v) and 0 < v <= 1, "must be in (0, 1]"),
    "steps": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "must be an integer >= 1"),
    "lr": (lambda v: _number(v) and 0 < v < math.inf, "must be a positive finite number"),
    "kl_weight": (lambda v: _number(v) and 0 <= v < math.inf, "must be a finite number >= 0"),
    "nll_scale": (lambda v: _number(v) and 0 <= v < math.inf, "must be a finite number >= 0"),
    "weight_decay": (lambda v: _number(v) and 0 <= v < math.inf, "must be a finite number >= 0"),
    "seed": (lambda v: seed_problem(v) is None, SEED_REQUIREMENT),
    "selectivity_floor": (lambda v: _number(v) and 0 < v <= 1, "must be a quantile in (0, 1]"),
    "kl_direction": (lambda v: v in KL_DIRECTIONS, f"must be {one_of(KL_DIRECTIONS)}"),
    "kl_reduction": (lambda v: v in KL_REDUCTIONS, f"must be {one_of(KL_REDUCTIONS)}"),
    "random_mask": (lambda v: v in RANDOM_MASK_DRAWS, f"must be {one_of(RANDOM_MASK_DRAWS)}"),
    "decay_mode": (lambda v: v in DECAY_MODES, f"must be {one_of(DECAY_MODES)}"),
    "forget_loss": (lambda v: v in FORGET_LOSSES, f"must be {one_of(FORGET_LOSSES)}"),
    "npo_beta": (lambda v: _number(v) and 0 < v < math.inf, "must be a positive finite number"),
}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def finetune_problem(name: str, value: Any) -> str | None:
    """What is wrong with ``value`` for the fine-tuning setting ``name`` (``"must be ..."``), or
    None when it is fine. :class:`FineTuneSettings` and the unlearn stage's settings both ask here."""
    test, requirement = _REQUIREMENTS[name]
    return None if test(value) else requirement


@dataclass(frozen=True, kw_only=True)
class FineTuneSettings:
    """The hyperparameters of one sparse fine-tuning run: the one place their defaults live
    (:meth:`SparseFineTuner.unlearn`, :meth:`SparseFineTuner.edit`, :func:`memlens.compare_masks`
    and the unlearn stage's settings all take or build one).

    memlens's defaults follow the paper's text where it fixes a value (10 steps, KL(model ||
    original)); :meth:`paper_code` gives the official code's values (docs/paper-fidelity.md).

    Attributes:
        fraction: share of the trainable weights a sparse mask selects (paper: 0.001).
        steps: Adam steps.
        lr: learning rate.
        kl_weight: weight of the retain KL term.
        seed: seed of a random mask.
        selectivity_floor: quantile of the retain sensitivity added before division in a
            selective mask (:func:`memlens.selective_mask`).
        nll_scale: factor of the target's NLL term (the official code's ``c_set_norm``: 0.1).
        kl_direction, kl_reduction: the retain KL's form (:func:`memlens.core.objectives.kl_to_reference`).
        weight_decay: Adam's weight decay, on the masked weights only (the code's: 1.0, coupled).
        decay_mode: ``coupled`` (L2 in the gradient, torch Adam's and the code's) or ``decoupled``
            (AdamW: the weights shrink by lr x weight_decay per step).
        random_mask: ``exact`` (the top-k count) or ``bernoulli`` (each weight with probability
            ``fraction``, the code's draw).
        forget_loss: the forget term of ``unlearn``: ``nll`` (-nll_scale x NLL, the paper's) or
            ``npo`` (negative preference optimization, Zhang et al. 2024, against the original
            model; memlens's addition, the baseline of the unlearning literature).
        npo_beta: NPO's inverse temperature (the NPO paper's 0.1).
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
    decay_mode: DecayMode = "coupled"
    forget_loss: ForgetLoss = "nll"
    npo_beta: float = 0.1

    #: the official code's values (notebooks/3 editing/fine-tuning.ipynb) of the settings it fixes:
    #: Adam lr 1e-5, coupled weight decay 1.0, 5 steps, 0.1 x NLL +
    #: KLDivLoss(batchmean)(log p_theta, p_theta0), Bernoulli random masks
    PAPER_CODE: ClassVar[dict[str, Any]] = dict(lr=1e-5, weight_decay=1.0, steps=5, nll_scale=0.1,
                                                 kl_direction="original||model", kl_reduction="batchmean",
                                                 random_mask="bernoulli")

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def paper_code(cls, **changes: Any) -> "FineTuneSettings":
        """The official code's fine-tuning (:attr:`PAPER_CODE`), with ``changes``."""
        return cls(**(cls.PAPER_CODE | changes))

    @classmethod
    def resolve(cls, settings: "FineTuneSettings | None", changes: dict[str, Any]) -> "FineTuneSettings":
        """``settings`` (the defaults when None) with ``changes`` applied; a name that is not a
        setting is refused with the list of settings."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise InputError(f"unknown fine-tuning setting(s) {', '.join(unknown)}; known: {', '.join(known)}")
        if settings is not None and not isinstance(settings, cls):
            raise InputError(f"settings must be a FineTuneSettings, got {type(settings).__name__}")
        base = settings if settings is not None else cls()
        return dataclasses.replace(base, **changes) if changes else base

    def validate(self) -> None:
        """Refuse a setting out of range with an :class:`InputError` that names it."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            problem = finetune_problem(f.name, value)
            if problem is not None:
                raise InputError(f"{f.name} {problem}, got {value!r}")

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
        seconds: wall time of the run; optimizer_seconds: of its optimizer steps alone.
        updates_rounded_away: for a model stored in bfloat16/float16, trained weights whose float32
            master copy moved while the stored weight kept its value (0 for float32 weights).
    """

    objective: str
    mask_kind: str
    rows: list[dict[str, Any]]
    weights_changed: int
    mask_size: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    optimizer_seconds: float = 0.0
    updates_rounded_away: int = 0
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
                               "mask_size": self.mask_size, "weights_changed": self.weights_changed,
                               "seconds": round(self.seconds, 4), "optimizer_seconds": round(self.optimizer_seconds, 4),
                               "updates_rounded_away": self.updates_rounded_away}
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
