"""The head-ablation stage: the EM each head's ablation costs the memorized paragraphs
(:class:`memlens.HeadAblation`), the causal check of the head stage's ranking."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from memlens.analyses.head_ablation import ABLATION_MODES, HeadAblation
from memlens.core.defaults import one_of
from memlens.run.settings import StageConfig, _runtime
from memlens.run.stage import Stage, register_stage, saved
from memlens.run.stages.common import disabled, splits

if TYPE_CHECKING:
    from memlens.run.context import RunContext
    from memlens.run.folder import RunFolder
    from memlens.viz.html import ReportBuilder


@dataclass(frozen=True, kw_only=True)
class HeadAblationConfig(StageConfig):
    """Settings of the head-ablation stage (on the head stage's memorized paragraphs, and only
    on the heads it patched exactly when it screened them with ``exact_top``).

    Attributes:
        enabled: run the stage.
        mode: ``zero`` or ``mean`` ablation of a head's ``hook_z``.
        batch_size: paragraphs per forward pass (runtime).
    """

    stage: ClassVar[str] = "head_ablation"
    enabled: bool = True
    mode: str = "zero"
    batch_size: int = _runtime(HeadAblation.DEFAULT_BATCH_SIZE)

    def validate(self) -> None:
        self._require("enabled", isinstance(self.enabled, bool), "must be true or false")
        self._require("mode", self.mode in ABLATION_MODES, f"must be {one_of(ABLATION_MODES)}")
        self._positive_int("batch_size")


def head_ablation_stage(ctx: "RunContext") -> dict[str, Any]:
    """Ablate each head (each head the head stage patched) on its memorized paragraphs ->
    ``head_ablation.safetensors``; the costliest head and where the head stage ranked it."""
    from memlens.analyses.head_ablation import HeadAblationResult
    from memlens.analyses.heads import HeadReport

    cfg = ctx.config.head_ablation
    if not cfg.enabled:
        raise disabled("head_ablation")
    mem, _ = splits(ctx, ctx.config.heads.max_paragraphs)
    report = ctx.folder.load("heads", HeadReport, "heads")
    patched = ~report.columns["patching"].isnan() if "patching" in report.columns else None
    heads = None if patched is None or bool(patched.all()) else [tuple(x) for x in patched.nonzero().tolist()]
    result = saved(ctx, ctx.folder.file("head_ablation"), HeadAblationResult, lambda: HeadAblation(
        ctx.model, batch_size=cfg.batch_size, progress=ctx.progress).run(mem, mode=cfg.mode, heads=heads))
    layer, head = result.top_head()
    return result.summary() | {"top_head_ranks": report.where(layer, head)}


def head_ablation_report(rb: "ReportBuilder", parts: list[str], folder: "RunFolder", s: dict[str, Any]) -> None:
    from memlens.analyses.head_ablation import HeadAblationResult

    parts.append(f"<p>Causal check of the head ranking: {s['mode']}-ablating {s['top_head']} costs the memorized "
                 f"paragraphs {s['top_em_drop']} EM tokens, the most of the {s['n_heads_ablated']} heads ablated; "
                 f"its ranks in the head table: {html.escape(json.dumps(s['top_head_ranks']))}.</p>")
    result = folder.load("head_ablation", HeadAblationResult, "head_ablation")
    parts.append(rb.figure(result.plot(), "EM lost by the memorized paragraphs when one head is ablated: the heads "
                                          "that carry the recitation are dark."))


ROW = register_stage(Stage(
    "head_ablation", head_ablation_stage, "EM lost when each head is ablated -> head_ablation.safetensors",
    config=HeadAblationConfig, files={"head_ablation": "head_ablation.safetensors"},
    title="Head ablation: the causal check", report=head_ablation_report, needs=("heads",)))
