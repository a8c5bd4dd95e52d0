"""The unlearning stage: sparse unlearning and editing, one target per trial, through each mask
(:func:`memlens.compare_masks`, the paper's Fig. 5)."""

from __future__ import annotations

import dataclasses
import html
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from memlens.analyses.finetune import FineTuneSettings, finetune_problem
from memlens.core.defaults import MASK_KINDS, RETAIN_DESIGNS, one_of
from memlens.run.settings import StageConfig
from memlens.run.stage import Stage, StageSkipped, register_stage, saved
from memlens.run.stages.common import perturbed_memorized, splits
from memlens.viz.html import table

if TYPE_CHECKING:
    from memlens.core.data import ParagraphSet
    from memlens.run.context import RunContext
    from memlens.run.folder import RunFolder
    from memlens.viz.html import ReportBuilder

_FT = FineTuneSettings()  # the fine-tuning defaults, written once in FineTuneSettings
#: the settings of this stage that are FineTuneSettings fields of the same name
FINETUNE_FIELDS = ("fraction", "steps", "lr", "weight_decay", "decay_mode", "kl_weight", "nll_scale", "kl_direction",
                   "kl_reduction", "random_mask", "selectivity_floor", "forget_loss", "npo_beta")


@dataclass(frozen=True, kw_only=True)
class UnlearnConfig(StageConfig):
    """Settings of the unlearning stage (:class:`memlens.SparseFineTuner`, :func:`memlens.compare_masks`).

    The fine-tuning settings (fraction ... selectivity_floor) are those of
    :class:`memlens.FineTuneSettings`, with its defaults; :meth:`finetune` builds one.

    Attributes:
        n_targets: trials per mask: each fine-tunes one memorized paragraph from the original
            weights (restored in between); targets repeat when fewer are memorized (paper: 20).
        retain_paragraphs: non-memorized paragraphs in each trial's KL retain set (paper: 10).
        retain_design: ``fixed`` = the same retain set in every trial; ``fresh`` = a fresh batch
            per trial drawn from every non-memorized paragraph of the scan (the code's design).
        fraction: share of the trainable weights a sparse mask selects (paper: 0.001).
        masks: masks compared: ``all``, ``topk``, ``selective``, ``random``.
        steps, lr: Adam steps and learning rate of unlearning (code: 5 at 1e-5; the paper's text: 10).
        weight_decay: Adam's weight decay, on the masked weights only (code: 1.0).
        decay_mode: ``coupled`` (L2 in the gradient; the code's) or ``decoupled`` (AdamW).
        kl_weight: weight of the retain KL term.
        nll_scale: weight of the target's NLL term (code: 0.1).
        kl_direction: ``model||original`` (the paper's formula) or ``original||model`` (the code's).
        kl_reduction: ``mean`` over positions or ``batchmean`` (summed over positions; the code's).
        random_mask: ``exact`` (the top-k count) or ``bernoulli`` (the code's draw).
        selectivity_floor: quantile of the retain sensitivity added before division (selective).
        forget_loss: ``nll`` (the paper's -NLL) or ``npo`` (negative preference optimization).
        npo_beta: NPO's inverse temperature.
        edit: also edit each target to its perturbed continuation (needs the perturb stage).
        edit_masks: masks compared for editing.
        edit_steps, edit_lr: Adam steps and learning rate of editing.
    """

    stage: ClassVar[str] = "unlearn"
    n_targets: int = 4
    retain_paragraphs: int = 16
    retain_design: str = "fixed"
    masks: tuple[str, ...] = MASK_KINDS
    fraction: float = _FT.fraction
    steps: int = _FT.steps
    lr: float = _FT.lr
    weight_decay: float = _FT.weight_decay
    decay_mode: str = _FT.decay_mode
    kl_weight: float = _FT.kl_weight
    nll_scale: float = _FT.nll_scale
    kl_direction: str = _FT.kl_direction
    kl_reduction: str = _FT.kl_reduction
    random_mask: str = _FT.random_mask
    selectivity_floor: float = _FT.selectivity_floor
    forget_loss: str = _FT.forget_loss
    npo_beta: float = _FT.npo_beta
    edit: bool = True
    edit_masks: tuple[str, ...] = ("all", "topk", "random")
    edit_steps: int = 30
    edit_lr: float = 1e-2

    def validate(self) -> None:
        self._positive_int("n_targets", "retain_paragraphs")
        for name in FINETUNE_FIELDS:
            problem = finetune_problem(name, getattr(self, name))
            self._require(name, problem is None, problem or "")
        for name, ft_name in (("edit_steps", "steps"), ("edit_lr", "lr")):
            problem = finetune_problem(ft_name, getattr(self, name))
            self._require(name, problem is None, problem or "")
        self._require("retain_design", self.retain_design in RETAIN_DESIGNS, f"must be {one_of(RETAIN_DESIGNS)}")
        self._require("edit", isinstance(self.edit, bool), "must be true or false")
        for name in ("masks", "edit_masks"):
            self._require(name, bool(getattr(self, name)) and set(getattr(self, name)) <= set(MASK_KINDS),
                          f"must be a non-empty list of {one_of(MASK_KINDS)}")

    def finetune(self, edit: bool = False, seed: int = 0) -> FineTuneSettings:
        """The :class:`FineTuneSettings` of unlearning (or, with ``edit``, of editing: ``edit_steps``
        at ``edit_lr``) these settings stand for; ``seed``: the random masks' base seed."""
        st = FineTuneSettings(**{name: getattr(self, name) for name in FINETUNE_FIELDS}, seed=seed)
        return dataclasses.replace(st, steps=self.edit_steps, lr=self.edit_lr) if edit else st

    def retain_set(self, non_memorized: Any) -> Any:
        """The ``retain`` argument of :func:`memlens.compare_masks` for these settings: every
        non-memorized paragraph (the pool fresh batches are drawn from) or the first
        ``retain_paragraphs`` (``fixed``)."""
        return non_memorized if self.retain_design == "fresh" else non_memorized[: self.retain_paragraphs]

    def compare_kwargs(self, seed: int = 0, edit: bool = False) -> dict[str, Any]:
        """The arguments of :func:`memlens.compare_masks` (and :func:`memlens.mask_tradeoff`)
        these settings stand for besides the sets: the fine-tuning settings and the trial design.
        The stages and benchmarks/paper_fig5.py use it, with :meth:`retain_set`."""
        return dict(settings=self.finetune(edit=edit, seed=seed), n_trials=self.n_targets, seed=seed,
                    retain_per_trial=self.retain_paragraphs if self.retain_design == "fresh" else None)

    def targets_and_pool(self, ctx: "RunContext") -> tuple["ParagraphSet", "ParagraphSet", "ParagraphSet"]:
        """The trial targets, the retain pool and the other memorized paragraphs scored beside
        them, from the run's scan; :class:`StageSkipped` when there are too few paragraphs."""
        mem, non = splits(ctx)
        if self.retain_design == "fresh" and len(non) < self.retain_paragraphs:
            raise StageSkipped(f"a fresh retain batch of {self.retain_paragraphs} needs as many non-memorized "
                               f"paragraphs (found {len(non)})")
        return mem[: self.n_targets], self.retain_set(non), mem[: max(self.n_targets, 16)]


def unlearn_stage(ctx: "RunContext") -> dict[str, Any]:
    """Sparse unlearning and editing, one target per trial (objective x masks, the paper's Fig. 5)
    -> ``unlearn.safetensors``. Editing (to the continuation that follows the target's worst
    prefix perturbation) needs more movement than unlearning: it runs ``edit_steps`` at ``edit_lr``."""
    from memlens.analyses.mask_comparison import MaskComparison, compare_masks

    cfg = ctx.config.unlearn
    targets, pool, others = cfg.targets_and_pool(ctx)
    seed = ctx.config.seed

    def compare() -> MaskComparison:
        tables = [compare_masks(ctx.model, targets, pool, other_memorized=others, objectives=("unlearn",),
                                masks=cfg.masks, checkpoint=ctx.folder.file("unlearn_checkpoint"), progress=ctx.progress, **cfg.compare_kwargs(seed))]
        pset = perturbed_memorized(ctx) if cfg.edit else None
        if pset is not None:
            by_original = {str(o): i for i, o in enumerate(pset.metadata.get("original", []))}
            if all(t in by_original for t in targets.ids):
                tables.append(compare_masks(
                    ctx.model, targets, pool, other_memorized=others, objectives=("edit",), masks=cfg.edit_masks,
                    perturbed=pset[[by_original[t] for t in targets.ids]],
                    checkpoint=ctx.folder.file("edit_checkpoint"), progress=ctx.progress,
                    **cfg.compare_kwargs(seed, edit=True)))
        return MaskComparison(rows=[r for t in tables for r in t.rows], targets=tables[0].targets,
                              trials=[r for t in tables for r in t.trials], provenance=tables[0].provenance)

    table_ = saved(ctx, ctx.folder.file("unlearn"), MaskComparison, compare)
    for name in ("unlearn_checkpoint", "edit_checkpoint"):
        ctx.folder.file(name).unlink(missing_ok=True)
    settings = {"unlearn": {"steps": cfg.steps, "lr": cfg.lr}}
    if any(r["objective"] == "edit" for r in table_.rows):
        settings["edit"] = {"steps": cfg.edit_steps, "lr": cfg.edit_lr}
    return table_.summary() | {"settings": settings, "design": {
        "trials": cfg.n_targets, "retain": cfg.retain_design, "retain_paragraphs": cfg.retain_paragraphs,
        "objective": f"-{cfg.nll_scale:g} NLL + {cfg.kl_weight:g} KL({cfg.kl_direction}, {cfg.kl_reduction})",
        "weight_decay": cfg.weight_decay, "decay_mode": cfg.decay_mode}}


def unlearn_report(rb: "ReportBuilder", parts: list[str], folder: "RunFolder", s: dict[str, Any]) -> None:
    from memlens.analyses.mask_comparison import MaskComparison

    rows = s["table"]
    cols = [c for c in ("objective", "mask", "n_trials", "mask_size", "weights_changed", "target_em_before",
                        "target_em_after", "target_em_after_ci_low", "target_em_after_ci_high",
                        "other_memorized_em_after", "retain_em_before", "retain_em_after", "retain_em_after_ci_low",
                        "retain_em_after_ci_high", "retain_top1_changed", "target_em_new_after",
                        "target_edit_success") if c in rows[0]]
    parts.append(table(rows, cols))
    how = "; ".join(f'{k}: {v["steps"]} Adam steps at lr {v["lr"]}' for k, v in s["settings"].items())
    design = s.get("design")
    trials = (f"{design['trials']} trials per mask, each one target with {'a fresh batch of ' if design['retain'] == 'fresh' else 'the same '}"
              f"{design['retain_paragraphs']} retain paragraphs; objective {html.escape(design['objective'])}, "
              f"weight decay {design['weight_decay']:g} (masked weights only)") if design else "each target fine-tuned alone"
    parts.append(f'<p class="guide">Targets {html.escape(", ".join(dict.fromkeys(s["targets"])))}: {trials} ({how}), '
                 "through all weights, the top 0.1% by gradient, the top 0.1% by gradient relative to the retain "
                 "set's sensitivity (selective), or a random 0.1%; EM after is the mean over trials with a bootstrap "
                 "95% interval (retain and other memorized: against the original model's own continuations). Edit "
                 "success = share of targets with EM >= 40 on their new continuation. Top-1 changed = continuation "
                 "positions (of each paragraph's 50) whose teacher-forced top-1 token moved: unlike EM, one flip at a "
                 "near-tie does not count every later token.</p>")
    fig = folder.load("unlearn", MaskComparison, "unlearn").plot()
    parts.append(rb.figure(fig, "Every trial is a point: unlearning should push the target's EM down and leave the "
                                "retain batch's EM near 50 (the paper's Fig. 5 violins)."))


ROW = register_stage(Stage(
    "unlearn", unlearn_stage, "sparse unlearning/editing, all vs top-k vs random weights -> unlearn.safetensors",
    config=UnlearnConfig, files={"unlearn": "unlearn.safetensors", "unlearn_checkpoint": "unlearn.runs.partial",
                                         "edit_checkpoint": "unlearn.edit.runs.partial"},
    title="Sparse unlearning and editing", report=unlearn_report, needs=("scan",)))
