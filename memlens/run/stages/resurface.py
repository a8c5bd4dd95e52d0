"""The resurfacing stage: does an unlearned paragraph come back after relearning, unrelated
fine-tuning, quantization, other prefixes or noise? (:class:`memlens.ResurfacingAudit`). Off by
default (it unlearns and attacks the model masks x objectives x trials times): ``[resurface]
enabled = true`` or ``memlens resurface``."""

from __future__ import annotations

import dataclasses
import html
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from memlens.analyses.resurfacing import ATTACKS, OBJECTIVES, ResurfacingAudit, ResurfacingSettings
from memlens.core.defaults import MASK_KINDS, one_of
from memlens.core.quantize import QuantScheme
from memlens.run.settings import StageConfig, _runtime
from memlens.run.stage import Stage, StageSkipped, register_stage, saved
from memlens.run.stages.common import disabled, splits
from memlens.viz.html import table

if TYPE_CHECKING:
    from memlens.run.context import RunContext
    from memlens.run.folder import RunFolder
    from memlens.viz.html import ReportBuilder

_D = ResurfacingSettings()


@dataclass(frozen=True, kw_only=True)
class ResurfaceConfig(StageConfig):
    """Settings of the resurfacing stage (the unlearning's other fine-tuning settings are the
    unlearning stage's; docs/resurfacing.md).

    Attributes:
        enabled: run it in ``memlens run`` (``memlens resurface`` runs it regardless).
        masks, mask_lrs: the unlearning masks and each one's learning rate under the paper's
            objective (aligned lists; chosen so that every mask forgets to a comparable EM where it
            can: ``benchmarks/resurfacing.py --calibrate`` on the default organism, docs/resurfacing.md).
        npo_mask_lrs: the same under NPO (empty: ``mask_lrs``; only read when ``npo`` is an objective).
        objectives: ``paper`` (-NLL) and/or ``npo``.
        attacks: any of relearn_split, relearn_unrelated, quantize, prefix, noise.
        n_trials: trials (a fresh group of memorized paragraphs each); steps: unlearning steps.
        group_size ... noise_draws: the attacks' design (:class:`memlens.ResurfacingSettings`).
        batch_size: paragraphs per pass (runtime).
    """

    stage: ClassVar[str] = "resurface"
    enabled: bool = False
    masks: tuple[str, ...] = ("all", "topk", "selective", "random")
    mask_lrs: tuple[float, ...] = (1e-3, 3e-2, 3e-1, 1e-1)
    npo_mask_lrs: tuple[float, ...] = (3e-4, 3e-3, 1e-2, 1e-2)
    objectives: tuple[str, ...] = OBJECTIVES
    attacks: tuple[str, ...] = ATTACKS
    n_trials: int = 3
    steps: int = 10
    group_size: int = _D.group_size
    relearn_steps: tuple[int, ...] = _D.relearn_steps
    relearn_lr: float = _D.relearn_lr
    unrelated_paragraphs: int = _D.unrelated_paragraphs
    schemes: tuple[str, ...] = _D.schemes
    prefix_lengths: tuple[int, ...] = _D.prefix_lengths
    lengthen: int = _D.lengthen
    prefix_perturbations: int = _D.prefix_perturbations
    noise_scales: tuple[float, ...] = _D.noise_scales
    noise_draws: int = _D.noise_draws
    batch_size: int = _runtime(ResurfacingAudit.DEFAULT_BATCH_SIZE)

    def validate(self) -> None:
        from memlens.core.errors import InputError

        self._require("enabled", isinstance(self.enabled, bool), "must be true or false")
        for name, known in (("masks", MASK_KINDS), ("objectives", OBJECTIVES), ("attacks", ATTACKS)):
            values = getattr(self, name)
            self._require(name, bool(values) and set(values) <= set(known), f"must be a non-empty list of {one_of(known)}")
        self._unique("masks", "objectives", "attacks", "relearn_steps", "prefix_lengths", "noise_scales", "schemes")
        for name in ("mask_lrs", "npo_mask_lrs"):
            values = getattr(self, name)
            aligned = len(values) == len(self.masks) or (name == "npo_mask_lrs" and (not values or "npo" not in self.objectives))
            self._require(name, aligned and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < math.inf for x in values),
                "must give one positive learning rate per mask, in the order of masks")
        self._positive_int("n_trials", "steps", "batch_size")
        for s in self.schemes:
            try:
                QuantScheme.parse(s)
            except InputError as e:
                self._require("schemes", False, str(e))
        try:
            self.design()
        except InputError as e:
            self._require("group_size", False, str(e).removeprefix("resurfacing: "))

    def design(self) -> ResurfacingSettings:
        """The :class:`memlens.ResurfacingSettings` these settings stand for."""
        return ResurfacingSettings(group_size=self.group_size, relearn_steps=self.relearn_steps,
                                   relearn_lr=self.relearn_lr, unrelated_paragraphs=self.unrelated_paragraphs,
                                   schemes=self.schemes, prefix_lengths=self.prefix_lengths, lengthen=self.lengthen,
                                   prefix_perturbations=self.prefix_perturbations, noise_scales=self.noise_scales,
                                   noise_draws=self.noise_draws)


def resurface_stage(ctx: "RunContext") -> dict[str, Any]:
    """Unlearn groups of memorized paragraphs with each mask and objective, attack, measure what
    comes back -> ``resurfacing.safetensors`` (each finished trial x objective x mask is
    checkpointed: an interrupted stage resumes)."""
    from memlens.analyses.resurfacing import ResurfacingResult

    cfg, ucfg = ctx.config.resurface, ctx.config.unlearn
    if not cfg.enabled and not ctx.fresh:
        raise disabled("resurface")
    mem, non = splits(ctx)
    if len(mem) < cfg.group_size:
        raise StageSkipped(f"needs {cfg.group_size} memorized paragraphs per group (found {len(mem)})")
    control = getattr(ctx.model.ground_truth, "held_out", None)
    if control is None and "relearn_split" in cfg.attacks:
        raise StageSkipped("relearn_split needs paragraphs the model never memorized (an organism's held-out set)")
    settings = dataclasses.replace(ucfg.finetune(seed=ctx.config.seed), steps=cfg.steps)
    ckpt = ctx.folder.file("resurfacing_checkpoint")
    result = saved(ctx, ctx.folder.file("resurfacing"), ResurfacingResult, lambda: ResurfacingAudit(
        ctx.model, batch_size=cfg.batch_size, progress=ctx.progress).run(
            mem, non, control, masks=cfg.masks, objectives=cfg.objectives, attacks=cfg.attacks, n_trials=cfg.n_trials,
            seed=ctx.config.seed, retain_per_trial=ucfg.retain_paragraphs, settings=settings,
            lr={"paper": dict(zip(cfg.masks, cfg.mask_lrs)),
                "npo": dict(zip(cfg.masks, cfg.npo_mask_lrs or cfg.mask_lrs))}, design=cfg.design(), checkpoint=ckpt))
    ckpt.unlink(missing_ok=True)
    return result.summary()


def resurface_report(rb: "ReportBuilder", parts: list[str], folder: "RunFolder", s: dict[str, Any]) -> None:
    from memlens.analyses.resurfacing import ResurfacingResult

    def cell(r: dict[str, Any]) -> str:
        if r["recovered"] is None:
            return "nothing was unlearned"
        return f"{r['recovered']:.2f} [{r['recovered_ci_low']:.2f}, {r['recovered_ci_high']:.2f}]"

    rows = [{"objective": r["objective"], "mask": r["mask"], "attack": r["attack"], "variant": r["variant"],
             "set": r["set"], "EM before": r["em_before"], "EM unlearned": r["em_unlearned"], "EM after": r["em_after"],
             "recovered share [95% CI]": cell(r), "control EM": r.get("control_em_after", ""),
             "retain EM": r.get("retain_em_after", "")} for r in s["headline"]]
    parts.append(table(rows))
    parts.append(f'<p class="guide">{s["trials"]} trial(s), each a group of memorized paragraphs unlearned together, then '
                 "attacked from the unlearned weights (put back bit for bit between attacks). Recovered share = (EM after "
                 "- EM unlearned) / (EM before - EM unlearned): 0 = stayed unlearned, 1 = fully back. relearn_split "
                 "fine-tunes all weights on half of the group and measures the other half (V); its control is the same "
                 "fine-tuning measured on never-memorized paragraphs. Interval: bootstrap over trials and paragraphs."
                 "</p>")
    result = folder.load("resurfacing", ResurfacingResult, "resurface")
    parts.append(rb.figure(result.plot(), "How much of what unlearning removed each attack brings back, per mask: "
                                          "bars near 0 mean the paragraph stayed unlearned."))
    quant = {k: v for k, v in s["details"].items() if "/quantize/" in k}
    if quant:
        parts.append("<h3>Quantization: unlearning changes smaller than half a bin</h3>" + table(
            [{"objective/mask/scheme": html.escape(k.replace("/quantize", "")), "weights changed": v.get("changed"),
              "share below half a bin": v.get("below_half_bin"),
              "original model quantized: target EM": v.get("original_quantized_target_em")} for k, v in quant.items()]))
    loc = {k: v for k, v in s["details"].items() if k.endswith("/relearn")}
    if loc:
        parts.append("<h3>Back to localization: what relearning moved</h3>" + table(
            [{"objective/mask": html.escape(k.removesuffix("/relearn")), **v} for k, v in loc.items()]))


ROW = register_stage(Stage(
    "resurface", resurface_stage, "unlearned paragraphs attacked (relearning, unrelated fine-tuning, quantization, "
    "prefixes, noise) -> resurfacing.safetensors", config=ResurfaceConfig,
    files={"resurfacing": "resurfacing.safetensors", "resurfacing_checkpoint": "resurfacing.blocks.partial"},
    title="Resurfacing: does an unlearned paragraph come back?", report=resurface_report, needs=("scan",)))
