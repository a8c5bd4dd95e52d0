"""The scan stage: EM and NLL of every paragraph (:func:`memlens.scan`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from memlens.analyses.scan import DEFAULT_BATCH_SIZE
from memlens.core.defaults import MIN_K, NON_MEMORIZED_MAX_EM
from memlens.core.errors import InputError
from memlens.run.settings import StageConfig, _runtime
from memlens.run.stage import Stage, register_stage
from memlens.viz.html import table

if TYPE_CHECKING:
    from memlens.run.context import RunContext
    from memlens.run.folder import RunFolder
    from memlens.viz.html import ReportBuilder


@dataclass(frozen=True, kw_only=True)
class ScanConfig(StageConfig):
    """Settings of :func:`memlens.scan`.

    Attributes:
        batch_size: paragraphs per forward pass (runtime).
        non_memorized_max_em: EM at or below which a paragraph is non-memorized (paper: 10).
        memorized_min_em: EM at or above which it is memorized (default: the whole continuation).
        min_k: the share of continuation tokens (those with the highest NLL) in the min-K% NLL
            column of every scan.
    """

    stage: ClassVar[str] = "scan"
    batch_size: int = _runtime(DEFAULT_BATCH_SIZE)
    non_memorized_max_em: int = NON_MEMORIZED_MAX_EM
    memorized_min_em: int | None = None
    min_k: float = MIN_K

    def scan_kwargs(self) -> dict[str, Any]:
        """The settings every scan engine (:func:`memlens.scan`, ``scan_to_table``, the Ray
        engine) takes: batch size, split thresholds, min-K share."""
        return dict(batch_size=self.batch_size, non_memorized_max_em=self.non_memorized_max_em,
                    memorized_min_em=self.memorized_min_em, min_k=self.min_k)

    def validate(self) -> None:
        self._positive_int("batch_size")
        self._require("non_memorized_max_em", isinstance(self.non_memorized_max_em, int) and self.non_memorized_max_em >= 0,
                      "must be an integer >= 0")
        self._require("min_k", isinstance(self.min_k, (int, float)) and not isinstance(self.min_k, bool)
                      and 0 < self.min_k <= 1, "must be a share in (0, 1]")
        if self.memorized_min_em is not None:
            self._require("memorized_min_em", isinstance(self.memorized_min_em, int)
                          and self.memorized_min_em > self.non_memorized_max_em,
                          "must be an integer above non_memorized_max_em")


def scan_stage(ctx: "RunContext") -> dict[str, Any]:
    """EM and NLL of every paragraph -> ``scan.safetensors`` (streamed; an interrupted scan
    resumes). With the model's own paragraphs, also the scan against its ground truth."""
    from memlens.analyses.scan import scan

    cfg = ctx.config.scan
    result = scan(ctx.model, ctx.paragraphs(), **cfg.scan_kwargs(), out=ctx.folder.file("scan"), progress=ctx.progress)
    summary: dict[str, Any] = {"scan": result.summary()}
    if ctx.model.dtype != torch.float32 or ctx.model.precision != "fp32":
        summary["greedy_check"] = greedy_check(ctx.model, result)
    if ctx.paragraphs().skipped:
        summary["skipped_short"] = {"count": len(ctx.paragraphs().skipped), "ids": ctx.paragraphs().skipped[:20]}
    truth = ctx.model.ground_truth
    if truth is not None and ctx.config.paragraphs is None:
        summary["ground_truth"] = truth.evaluate(result)
        summary["organism"] = truth.summary()
    return summary


def greedy_check(model: Any, result: Any, n: int = 16) -> dict[str, Any]:
    """Teacher-forced EM (the scan's) against real greedy decoding on the first ``n`` paragraphs:
    they agree exactly up to ties, and at low precision near-ties become ties."""
    from memlens.core.metrics import exact_match, greedy_decode

    sample = result.paragraphs[:n]
    decoded = exact_match(greedy_decode(model, sample.prefixes, sample.continuation_len).cpu(), sample.continuations)
    scanned = result.em[: len(sample)]
    return {"n": len(sample), "agree": int((decoded == scanned).sum()),
            "max_abs_diff": int((decoded - scanned).abs().max()), "dtype": str(model.dtype).replace("torch.", ""),
            "precision": model.precision}


def scan_report(rb: "ReportBuilder", parts: list[str], folder: "RunFolder", s: dict[str, Any]) -> None:
    from memlens.analyses.duplication import COUNT_COLUMNS, duplication_profile
    from memlens.analyses.scan import ScanResult

    sc = s["scan"]
    parts.append(table([{"split": k, **sc[k]} for k in ("memorized", "partly", "non_memorized")]))
    result = folder.load("scan", ScanResult, "scan")
    parts.append(rb.figure(result.plot(), "EM = tokens of the 50-token continuation reproduced exactly by greedy decoding; "
                                          "memorized paragraphs pile up at the right edge."))
    if any(c in result.paragraphs.metadata for c in COUNT_COLUMNS):
        try:
            dup = duplication_profile(result)
        except InputError:  # a user's file may hold anything in its count column
            return
        d = dup.summary()
        parts.append(rb.figure(dup.plot(), f"Each point is a paragraph (the paper's Fig. 2 / 8): a model memorizes what "
                                           f"it saw often (Spearman EM vs {d['count_column']} "
                                           f"{d['spearman_em_vs_count']}, NLL vs {d['count_column']} "
                                           f"{d['spearman_nll_vs_count']})."))


ROW = register_stage(Stage(
    "scan", scan_stage, "EM and NLL of every paragraph -> scan.safetensors", config=ScanConfig,
    files={"scan": "scan.safetensors"}, title="Scan: which paragraphs are memorized", report=scan_report))
