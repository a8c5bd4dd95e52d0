"""The trade-off stage: the unlearning masks compared at equal forgetting, over a grid of learning
rates x steps x weight decays with several seeds (:func:`memlens.mask_tradeoff`), on the unlearning
stage's targets, retain design and objective: each mask's Pareto frontier and the retain EM it keeps
at target EM 25."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from memlens.core.defaults import MASK_KINDS, one_of
from memlens.core.errors import InputError
from memlens.run.settings import StageConfig
from memlens.run.stage import Stage, StageSkipped, register_stage, saved
from memlens.viz.html import table

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
        steps: the Adam steps of the grid (empty: the unlearning stage's steps).
        decays: the weight decays of the grid: ``none``, ``coupled:<w>``, ``decoupled:<w>`` (empty:
            the unlearning stage's decay).
        seeds: seeds of every grid point (retain batches, random masks); >= 3 for intervals.
        masks: the masks whose frontiers are drawn.
    """

    stage: ClassVar[str] = "tradeoff"
    lrs: tuple[float, ...] = ()
    steps: tuple[int, ...] = ()
    decays: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2)
    masks: tuple[str, ...] = ("all", "topk", "random")

    def validate(self) -> None:
        from memlens.analyses.mask_comparison import parse_decay
        from memlens.core.defaults import seed_problem

        self._require("lrs", all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                                 and x > 0 for x in self.lrs), "must be a list of numbers > 0")
        self._require("steps", all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in self.steps),
                      "must be a list of integers >= 1")
        for d in self.decays:
            try:
                parse_decay(d)
            except InputError as e:
                self._require("decays", False, str(e))
        self._require("seeds", bool(self.seeds) and all(seed_problem(x) is None for x in self.seeds),
                      "must be a non-empty list of integers from 0 to 2**63 - 1")
        self._require("masks", bool(self.masks) and set(self.masks) <= set(MASK_KINDS),
                      f"must be a non-empty list of {one_of(MASK_KINDS)}")
        self._unique("lrs", "steps", "decays", "seeds", "masks")


def tradeoff_stage(ctx: "RunContext") -> dict[str, Any]:
    """The masks' trade-off curves -> ``unlearn_tradeoff.safetensors``."""
    from memlens.analyses.mask_tradeoff import MaskTradeoff, mask_tradeoff

    cfg, ucfg = ctx.config.tradeoff, ctx.config.unlearn
    if not cfg.lrs:
        raise StageSkipped("no learning rates (set [tradeoff] lrs)")
    targets, pool, _ = ucfg.targets_and_pool(ctx)
    kwargs = ucfg.compare_kwargs(ctx.config.seed)
    kwargs.pop("seed")
    result = saved(ctx, ctx.folder.file("unlearn_tradeoff"), MaskTradeoff, lambda: mask_tradeoff(
        ctx.model, targets, pool, cfg.lrs, masks=cfg.masks, checkpoint=ctx.folder.file("tradeoff_checkpoint"),
        steps=cfg.steps, decays=cfg.decays, seeds=cfg.seeds, progress=ctx.progress,
        out=ctx.folder.file("unlearn_tradeoff"), **kwargs))
    return result.summary()


def tradeoff_report(rb: "ReportBuilder", parts: list[str], folder: "RunFolder", s: dict[str, Any]) -> None:
    from memlens.analyses.mask_tradeoff import MaskTradeoff

    result = folder.load("unlearn_tradeoff", MaskTradeoff, "tradeoff")
    at = s["retain_at_target_25"]
    g = s["grid"]
    parts.append(table([{"mask": m, "retain EM at target EM 25": v["retain_em"], "95% CI low": v["ci_low"],
                         "95% CI high": v["ci_high"], "seeds": v["n_seeds"]} for m, v in at.items()]))
    parts.append(f'<p class="guide">Grid: lr {html.escape(str(g["lr"]))} x steps {html.escape(str(g["steps"]))} x weight '
                 f'decay {html.escape(str(g["decay"]))}, seeds {html.escape(str(g["seed"]))}. Each mask\'s frontier '
                 "keeps the settings no other beats on both forgetting and sparing; its retain EM at target EM 25 is "
                 "read off each seed's frontier (linear between points; the untouched model is a point) and averaged "
                 "(bootstrap 95% interval over seeds). Empty: no setting forgot that far.</p>")
    parts.append(rb.figure(result.plot(), "Masks at equal forgetting: faint points are the grid, lines the frontiers; at "
                                          "the same target EM (x), the mask whose frontier lies higher spares the retain "
                                          "set better."))


ROW = register_stage(Stage(
    "tradeoff", tradeoff_stage, "unlearning masks compared at equal forgetting over lr x steps x weight decay -> "
    "unlearn_tradeoff.safetensors", config=TradeoffConfig,
    files={"unlearn_tradeoff": "unlearn_tradeoff.safetensors", "tradeoff_checkpoint": "unlearn_tradeoff.runs.partial"},
    title="Unlearning trade-off: the masks at equal forgetting", report=tradeoff_report, needs=("scan",)))
