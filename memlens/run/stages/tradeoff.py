"""The trade-off stage: the unlearning masks compared at equal forgetting, over a grid of
learning rates (:func:`memlens.mask_tradeoff`), on the unlearning stage's targets and retain design."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from memlens.core.defaults import MASK_KINDS, one_of
from memlens.run.settings import StageConfig
from memlens.run.stage import Stage, StageSkipped, register_stage, saved

if TYPE_CHECKING:
    from memlens.run.context import RunContext
    from memlens.run.folder import RunFolder
    from memlens.viz.html import ReportBuilder


@dataclass(frozen=True, kw_only=True)
class TradeoffConfig(StageConfig):
    """Settings of the trade-off stage (the other fine-tuning settings, the targets and the
    retain design are the unlearning stage's).

    Attributes:
        lrs: the learning rates; empty: the stage is skipped.
        masks: the masks whose curves are drawn.
    """

    stage: ClassVar[str] = "tradeoff"
    lrs: tuple[float, ...] = ()
    masks: tuple[str, ...] = ("all", "topk", "random")

    def validate(self) -> None:
        self._require("lrs", all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                                 and x > 0 for x in self.lrs), "must be a list of numbers > 0")
        self._require("masks", bool(self.masks) and set(self.masks) <= set(MASK_KINDS),
                      f"must be a non-empty list of {one_of(MASK_KINDS)}")


def tradeoff_stage(ctx: "RunContext") -> dict[str, Any]:
    """The masks' trade-off curves -> ``unlearn_tradeoff.safetensors``."""
    from memlens.analyses.mask_comparison import MaskTradeoff, mask_tradeoff

    cfg, ucfg = ctx.config.tradeoff, ctx.config.unlearn
    if not cfg.lrs:
        raise StageSkipped("no learning rates (set [tradeoff] lrs)")
    targets, pool, _ = ucfg.targets_and_pool(ctx)
    result = saved(ctx, ctx.folder.file("unlearn_tradeoff"), MaskTradeoff, lambda: mask_tradeoff(
        ctx.model, targets, pool, cfg.lrs, masks=cfg.masks, checkpoint=ctx.folder.file("tradeoff_checkpoint"),
        progress=ctx.progress, **ucfg.compare_kwargs(ctx.config.seed)))
    return result.summary()


def tradeoff_report(rb: "ReportBuilder", parts: list[str], folder: "RunFolder", s: dict[str, Any]) -> None:
    from memlens.analyses.mask_comparison import MaskTradeoff

    fig = folder.load("unlearn_tradeoff", MaskTradeoff, "tradeoff").plot()
    parts.append(rb.figure(fig, "Masks at equal forgetting: one point per learning rate; at the same target EM "
                                "(x), the mask whose curve lies higher spares the retain set better."))


ROW = register_stage(Stage(
    "tradeoff", tradeoff_stage, "unlearning masks compared at equal forgetting over learning rates -> "
    "unlearn_tradeoff.safetensors", config=TradeoffConfig,
    files={"unlearn_tradeoff": "unlearn_tradeoff.safetensors", "tradeoff_checkpoint": "unlearn_tradeoff.runs.partial"},
    title="Unlearning trade-off: the masks at equal forgetting", report=tradeoff_report, needs=("scan",)))
