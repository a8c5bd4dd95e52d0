"""The head stage: every kind of per-head evidence in one table (:class:`memlens.HeadLocalizer`),
with circuitsvis views of the top head's attention."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from memlens.analyses.heads import HeadLocalizer
from memlens.core.defaults import PATCH_KINDS, PATCH_POSITIONS, one_of
from memlens.core.io import write_json_atomic
from memlens.run.report import views_html
from memlens.run.settings import StageConfig, _runtime
from memlens.run.stage import Stage, register_stage, saved
from memlens.run.stages.common import perturbed_memorized, splits, view_dict
from memlens.viz.html import table

if TYPE_CHECKING:
    from memlens.run.context import RunContext
    from memlens.run.folder import RunFolder
    from memlens.viz.html import ReportBuilder


@dataclass(frozen=True, kw_only=True)
class HeadsConfig(StageConfig):
    """Settings of the head stage (:class:`memlens.HeadLocalizer`).

    Attributes:
        max_paragraphs: memorized paragraphs analysed (at most); the head-ablation stage
            ablates heads on the same paragraphs.
        causal_share: weight of activation patching in the combined rank, relative to the
            other evidence kinds together (0.5: as much as all of them).
        patch_kinds: activations patched per head (``z``, ``q``, ``k``, ``v``).
        exact_top: 0: patch every head exactly; n: screen every head with attribution patching
            and patch exactly (and ablate) only the n it ranks highest (models with many heads).
        patch_positions: ``all`` positions of a head are patched, or only the ``perturbed`` one(s)
            (the paper's Appendix A.3).
        view_paragraphs: memorized paragraphs in the top head's attention views (the paper's
            Fig. 6 bottom / Fig. 12); 0: none.
        batch_size: paragraphs per pass (runtime).
    """

    stage: ClassVar[str] = "heads"
    max_paragraphs: int = 16
    causal_share: float = 0.5
    patch_kinds: tuple[str, ...] = PATCH_KINDS
    exact_top: int = 0
    view_paragraphs: int = 8
    patch_positions: str = "all"
    batch_size: int = _runtime(HeadLocalizer.DEFAULT_BATCH_SIZE)

    def validate(self) -> None:
        self._positive_int("max_paragraphs", "batch_size")
        self._require("view_paragraphs", isinstance(self.view_paragraphs, int) and not isinstance(self.view_paragraphs, bool)
                      and self.view_paragraphs >= 0, "must be an integer >= 0")
        self._require("patch_positions", self.patch_positions in PATCH_POSITIONS, f"must be {one_of(PATCH_POSITIONS)}")
        self._require("exact_top", isinstance(self.exact_top, int) and self.exact_top >= 0, "must be an integer >= 0")
        self._require("causal_share", isinstance(self.causal_share, (int, float)) and 0 <= self.causal_share < 1,
                      "must be in [0, 1)")
        self._require("patch_kinds", bool(self.patch_kinds) and set(self.patch_kinds) <= set(PATCH_KINDS),
                      f"must be a non-empty list of {one_of(PATCH_KINDS)}")


def heads_stage(ctx: "RunContext") -> dict[str, Any]:
    """HeadLocalizer on the memorized paragraphs (perturbed versions from the perturbation stage
    when present) -> ``heads.safetensors``; circuitsvis views of the top head -> ``head_views.json``."""
    from memlens.analyses.frequency import UnigramCounts
    from memlens.analyses.heads import HeadReport

    cfg = ctx.config.heads
    mem, non = splits(ctx, cfg.max_paragraphs)
    unigram = UnigramCounts.default_for(ctx.model, ctx.paragraphs())
    report = saved(ctx, ctx.folder.file("heads"), HeadReport, lambda: HeadLocalizer(
        ctx.model, batch_size=cfg.batch_size).run(
            mem, non, perturbed=perturbed_memorized(ctx), unigram=unigram, max_paragraphs=cfg.max_paragraphs,
            patch_kinds=cfg.patch_kinds, causal_share=cfg.causal_share, progress=ctx.progress,
            exact_top=cfg.exact_top, patch_positions=cfg.patch_positions))
    top = report.top(1).iloc[0]
    L, H = int(top["layer"]), int(top["head"])
    views_path = ctx.folder.file("head_views")
    if not views_path.exists() or ctx.fresh:
        from memlens.analyses.attention_views import head_attention_views

        views = []
        for i in range(min(2, len(mem))):
            views += report.attention_view(ctx.model, mem, L, H, paragraph=i, unigram=unigram)
        if cfg.view_paragraphs:
            views += head_attention_views(ctx.model, mem, L, H, max_paragraphs=cfg.view_paragraphs, unigram=unigram,
                                          batch_size=cfg.batch_size)
        write_json_atomic(views_path, [view_dict(v) for v in views])
    out = report.summary()
    if "rare_tau" in report.columns:
        tau = report.columns["rare_tau"]
        rl, rh = divmod(int(torch.nan_to_num(tau, nan=float("inf")).argmin()), report.n_heads)
        out["rare_token_head"] = {"layer": rl, "head": rh, "kendall_tau": round(float(tau[rl, rh]), 3), "ranks": report.where(rl, rh)}
    return out


def heads_report(rb: "ReportBuilder", parts: list[str], folder: "RunFolder", s: dict[str, Any]) -> None:
    from memlens.analyses.heads import HeadReport

    report = folder.load("heads", HeadReport, "heads")
    df = report.to_dataframe().head(10)
    cols = ["layer", "head", "combined_rank", *report.evidence]
    parts.append(table(df[cols].to_dict(orient="records"), cols))
    parts.append('<p class="guide">One row per head, most implicated first; each evidence column is larger = more '
                 "implicated; the combined rank weighs patching (causal) as much as the other kinds together.</p>")
    if report.agreement:
        parts.append("<p>Attribution vs exact patching (Spearman over heads): "
                     + html.escape(", ".join(f"{k} {v:.2f}" for k, v in report.agreement.items())) + "</p>")
    for note in report.notes:
        parts.append(f'<p class="guide">Note: {html.escape(note)}</p>')
    parts.append(rb.figure(report.plot_all(), "Layer x head heatmaps, one per evidence kind, each scaled to [0, 1]: "
                                              "bright cells are the heads that kind implicates."))
    if report.rare is not None:
        top = report.top(1).iloc[0]
        parts.append(rb.figure(report.rare.plot(int(top["layer"]), int(top["head"])),
                               "Attention from the first continuation token by prefix-token rarity rank: a falling "
                               "curve (negative Kendall tau) means the head attends to rare tokens."))
    parts.extend(views_html(folder, "head_views", "heads"))


ROW = register_stage(Stage(
    "heads", heads_stage, "HeadLocalizer: per-head evidence and combined rank -> heads.safetensors, head_views.json",
    config=HeadsConfig, files={"heads": "heads.safetensors", "head_views": "head_views.json"},
    title="Heads: the memorization head and its evidence", report=heads_report, needs=("scan",)))
