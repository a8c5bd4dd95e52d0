"""The pair-gradient stage: the paper's Fig. 10, activation gradients of each memorized paragraph
and its perturbed version (:func:`memlens.pair_activation_gradients`)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from memlens.core.errors import InputError
from memlens.run.settings import StageConfig
from memlens.run.stage import Stage, StageSkipped, register_stage, saved
from memlens.run.stages.common import disabled, perturbed_memorized, splits

if TYPE_CHECKING:
    from memlens.run.context import RunContext
    from memlens.run.folder import RunFolder
    from memlens.viz.html import ReportBuilder


@dataclass(frozen=True, kw_only=True)
class PairGradientsConfig(StageConfig):
    """Settings of the pair-gradient stage.

    Attributes:
        enabled: run the stage.
        max_paragraphs: memorized paragraphs (with a perturbed version from the perturbation
            stage) whose pairs are differentiated (at most).
    """

    stage: ClassVar[str] = "pair_gradients"
    enabled: bool = True
    max_paragraphs: int = 16

    def validate(self) -> None:
        self._require("enabled", isinstance(self.enabled, bool), "must be true or false")
        self._positive_int("max_paragraphs")


def pair_gradients_stage(ctx: "RunContext") -> dict[str, Any]:
    """Activation gradients of each memorized paragraph and its worst perturbed version at the
    perturbed and the first changed token -> ``pair_gradients.safetensors``."""
    from memlens.analyses.pair_gradients import PairGradientResult, pair_activation_gradients
    from memlens.analyses.patching import make_patch_pairs

    cfg = ctx.config.pair_gradients
    if not cfg.enabled:
        raise disabled("pair_gradients")
    mem, _ = splits(ctx, cfg.max_paragraphs)
    perturbed = perturbed_memorized(ctx)
    if perturbed is None:
        raise StageSkipped("no perturbed paragraphs (the perturbation stage wrote none)")
    ids = set(mem.ids)
    keep = [i for i, o in enumerate(perturbed.metadata.get("original", [])) if str(o) in ids]
    if not keep:
        raise StageSkipped("none of the memorized paragraphs has a perturbed version")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unchanged continuations are left out, as in patching
        try:
            pairs = make_patch_pairs(mem, perturbed[keep])
        except InputError as e:
            raise StageSkipped(str(e)) from None
    result = saved(ctx, ctx.folder.file("pair_gradients"), PairGradientResult,
                   lambda: pair_activation_gradients(ctx.model, pairs, progress=ctx.progress))
    return result.summary()


def pair_gradients_report(rb: "ReportBuilder", parts: list[str], folder: "RunFolder", s: dict[str, Any]) -> None:
    from memlens.analyses.pair_gradients import PairGradientResult

    pg = folder.load("pair_gradients", PairGradientResult, "pair_gradients")
    parts.append(rb.figure(pg.plot("v"), f"The paper's Fig. 10 over {len(pg.pair_ids)} memorized paragraphs and their "
                                         "perturbed versions: |dNLL/dv| of each head at the perturbed prefix token "
                                         "and at the position predicting the first changed token, for each run's "
                                         "own token (each panel scaled to [0, 1])."))


ROW = register_stage(Stage(
    "pair_gradients", pair_gradients_stage,
    "activation gradients of memorized paragraphs and their perturbed versions (Fig. 10) -> pair_gradients.safetensors",
    config=PairGradientsConfig, files={"pair_gradients": "pair_gradients.safetensors"},
    title="Activation gradients of perturbed pairs (the paper's Fig. 10)", report=pair_gradients_report,
    needs=("perturb",)))
