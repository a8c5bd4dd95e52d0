"""The noise stage: Gaussian noise on the unlearning targets' sparse masks
(:class:`memlens.NoiseIntervention`, the official code's noise notebook)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from memlens.analyses.noise import NoiseIntervention
from memlens.core.defaults import MASK_KINDS, NOISE_REFERENCES, NOISE_SCALES, one_of
from memlens.run.settings import StageConfig, _runtime
from memlens.run.stage import Stage, StageSkipped, register_stage, saved
from memlens.viz.html import table

if TYPE_CHECKING:
    from memlens.run.context import RunContext
    from memlens.run.folder import RunFolder
    from memlens.viz.html import ReportBuilder

_SPARSE = tuple(k for k in MASK_KINDS if k != "all")


@dataclass(frozen=True, kw_only=True)
class NoiseConfig(StageConfig):
    """Settings of the noise stage (the targets, retain set and mask settings are the unlearning
    stage's).

    Attributes:
        scales: noise scales (factors of each parameter's std); empty: the stage is skipped (the
            code's grid: ``PAPER_NOISE_SCALES``).
        masks: masks noised (``topk``, ``selective``, ``random``; same size).
        draws: noise draws per scale.
        reference: ``greedy`` (the model's own continuation) or ``true`` (the code's).
        batch_size: paragraphs per forward pass (runtime).
    """

    stage: ClassVar[str] = "noise"
    scales: tuple[float, ...] = NOISE_SCALES
    masks: tuple[str, ...] = ("topk", "selective", "random")
    draws: int = 3
    reference: str = "greedy"
    batch_size: int = _runtime(NoiseIntervention.DEFAULT_BATCH_SIZE)

    def validate(self) -> None:
        self._require("scales", all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                                    and x >= 0 for x in self.scales), "must be a list of numbers >= 0")
        self._require("masks", bool(self.masks) and set(self.masks) <= set(_SPARSE),
                      f"must be a non-empty list of {one_of(_SPARSE)}")
        self._positive_int("draws", "batch_size")
        self._require("reference", self.reference in NOISE_REFERENCES, f"must be {one_of(NOISE_REFERENCES)}")


def noise_stage(ctx: "RunContext") -> dict[str, Any]:
    """Noise on the top-k / selective / random masks of the targets' contrastive gradient ->
    ``noise.safetensors``."""
    from memlens.analyses.gradients import GradientMap
    from memlens.analyses.noise import NoiseResult
    from memlens.analyses.unlearn import SparseFineTuner

    cfg, ucfg = ctx.config.noise, ctx.config.unlearn
    if not cfg.scales:
        raise StageSkipped("no noise scales (set [noise] scales)")
    targets, pool, _ = ucfg.targets_and_pool(ctx)
    retain = pool[: ucfg.retain_paragraphs]
    seed = ctx.config.seed

    def run() -> NoiseResult:
        gmap = GradientMap(ctx.model, progress=ctx.progress).run(targets, contrast=retain, progress=False)
        tuner = SparseFineTuner(ctx.model, progress=ctx.progress)
        masks = {kind: tuner.make_mask(kind, ucfg.fraction, gmap, seed=seed, random_draw=ucfg.random_mask,
                                       selectivity_floor=ucfg.selectivity_floor,
                                       sensitivity=tuner.retain_sensitivity(retain) if kind == "selective" else None)
                 for kind in cfg.masks}
        return NoiseIntervention(ctx.model, batch_size=cfg.batch_size).run(
            targets, retain, masks, cfg.scales, draws=cfg.draws, seed=seed, reference=cfg.reference,
            progress=ctx.progress)

    return saved(ctx, ctx.folder.file("noise"), NoiseResult, run).summary()


def noise_report(rb: "ReportBuilder", parts: list[str], folder: "RunFolder", s: dict[str, Any]) -> None:
    from memlens.analyses.noise import NoiseResult

    noise = folder.load("noise", NoiseResult, "noise")
    rows = [{"mask": m, "weights": v["weights"], **{k: v2 for k, v2 in v.items() if k != "weights"}}
            for m, v in s["masks"].items()]
    parts.append(table(rows))
    parts.append(rb.figure(noise.plot(), "Noise intervention: Gaussian noise (std = scale x each parameter's std) "
                                         "on one mask's weights; a mask that holds the memorized paragraphs "
                                         "breaks them (red) at a noise that spares the non-memorized ones (blue). "
                                         "Error bars: min-max over noise draws."))


ROW = register_stage(Stage(
    "noise", noise_stage, "Gaussian noise on the targets' sparse masks -> noise.safetensors", config=NoiseConfig,
    files={"noise": "noise.safetensors"}, title="Noise intervention", report=noise_report, needs=("scan",)))
