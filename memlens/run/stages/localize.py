"""The localization stage: every registered localizer scored against planted neurons (INJ) and by
what dropping its neurons does (DEL) (:class:`memlens.LocalizationBenchmark`). Off by default (it
trains the model once per ratio and seed): ``[localize] enabled = true`` or ``memlens localize``."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from memlens.analyses.localization import LocalizationBenchmark, check_localizer_names, localizer_names
from memlens.analyses.injection import InjectionSettings
from memlens.analyses.localization.benchmark import RATIOS
from memlens.core.defaults import seed_problem
from memlens.core.errors import InputError
from memlens.run.settings import StageConfig, _runtime
from memlens.run.stage import Stage, register_stage, saved
from memlens.run.stages.common import disabled, splits
from memlens.viz.html import table

if TYPE_CHECKING:
    from memlens.run.context import RunContext
    from memlens.run.folder import RunFolder
    from memlens.viz.html import ReportBuilder


@dataclass(frozen=True, kw_only=True)
class LocalizeConfig(StageConfig):
    """Settings of the localization stage (:meth:`memlens.LocalizationBenchmark.run`).

    Attributes:
        enabled: run the stage (``memlens localize --out D`` runs it whatever this says).
        localizers: the localizers scored (empty: every registered one).
        ratios: planted neuron shares per layer, each in (0, 1).
        seeds: seeds of the planted sets (at least 3 give intervals that mean something).
        n_paragraphs: new paragraphs injected per ratio and seed (the model's held-out ones).
        weight_ratios: planted single-weight shares for the weight-level INJ (empty: none).
        inject_lr, inject_steps: the injection's Adam learning rate and step budget.
        contrast_paragraphs: non-memorized paragraphs the localizers (and the injection) keep.
        del_paragraphs: non-memorized paragraphs DEL measures the NLL change on, and at most this
            many other memorized paragraphs for the collateral EM drop.
        batch_size: paragraphs per pass (runtime).
    """

    stage: ClassVar[str] = "localize"
    enabled: bool = False
    localizers: tuple[str, ...] = ()
    ratios: tuple[float, ...] = RATIOS
    seeds: tuple[int, ...] = (0, 1, 2)
    n_paragraphs: int = 4
    weight_ratios: tuple[float, ...] = ()
    inject_lr: float = InjectionSettings().lr
    inject_steps: int = InjectionSettings().steps
    contrast_paragraphs: int = 16
    del_paragraphs: int = 16
    batch_size: int = _runtime(LocalizationBenchmark.DEFAULT_BATCH_SIZE)

    def validate(self) -> None:
        self._require("enabled", isinstance(self.enabled, bool), "must be true or false")
        if self.localizers:
            try:
                check_localizer_names(self.localizers)
            except InputError as e:
                self._require("localizers", False, str(e).replace("localizers must be", "must be"))
        for name in ("ratios", "weight_ratios"):
            self._require(name, all(isinstance(r, (int, float)) and not isinstance(r, bool) and 0 < r < 1
                                    for r in getattr(self, name)), "must be a list of shares in (0, 1)")
        self._require("ratios", bool(self.ratios) or bool(self.weight_ratios), "must not be empty when weight_ratios is")
        self._require("seeds", bool(self.seeds) and all(seed_problem(s) is None for s in self.seeds),
                      "must be a non-empty list of integers from 0 to 2**63 - 1")
        self._positive_int("n_paragraphs", "inject_steps", "contrast_paragraphs", "del_paragraphs", "batch_size")
        self._unique("localizers", "ratios", "weight_ratios", "seeds")
        self._require("inject_lr", isinstance(self.inject_lr, (int, float)) and 0 < self.inject_lr < math.inf,
                      "must be a positive finite number")


def localize_stage(ctx: "RunContext") -> dict[str, Any]:
    """INJ and DEL for the configured localizers -> ``localization.safetensors`` (each finished
    ratio and seed is checkpointed: an interrupted stage resumes)."""
    from memlens.analyses.localization import LocalizationBenchmarkResult

    cfg = ctx.config.localize
    if not cfg.enabled and not ctx.fresh:
        raise disabled("localize")
    truth = ctx.model.ground_truth
    if truth is None:
        raise InputError("the localization stage injects the model's held-out ground-truth paragraphs; this model has "
                         "none (use an organism, or call memlens.LocalizationBenchmark with paragraphs=)")
    mem, non = splits(ctx)
    ckpt = ctx.folder.file("localization_checkpoint")
    result = saved(ctx, ctx.folder.file("localization"), LocalizationBenchmarkResult, lambda: LocalizationBenchmark(
        ctx.model, batch_size=cfg.batch_size, progress=ctx.progress).run(
            truth.held_out, memorized=mem, non_memorized=non, localizers=cfg.localizers or localizer_names(),
            ratios=cfg.ratios, seeds=cfg.seeds, n_paragraphs=cfg.n_paragraphs, weight_ratios=cfg.weight_ratios,
            inject_lr=cfg.inject_lr, inject_steps=cfg.inject_steps, contrast_paragraphs=cfg.contrast_paragraphs,
            del_paragraphs=cfg.del_paragraphs, checkpoint=ckpt))
    ckpt.unlink(missing_ok=True)
    return result.summary()


def localize_report(rb: "ReportBuilder", parts: list[str], folder: "RunFolder", s: dict[str, Any]) -> None:
    from memlens.analyses.localization import LocalizationBenchmarkResult

    def cell(r: dict[str, Any], k: str, digits: int = 2) -> str:
        if k not in r or r[k] is None:
            return ""
        return f"{r[k]:.{digits}f} [{r[k + '_ci_low']:.{digits}f}, {r[k + '_ci_high']:.{digits}f}]"

    natural = {(r["localizer"], r["ratio"]): r for r in s.get("natural", [])}
    rows = []
    for r in s["neuron"]:
        d = natural.get((r["localizer"], r["ratio"]), {})
        rows.append({"localizer": r["localizer"], "ratio": r["ratio"], "seeds": r["n_seeds"],
                     "INJ recall [95% CI]": cell(r, "recall"),
                     "DEL (own memorized): target EM drop": cell(d, "del_target_em_drop", 1),
                     "DEL: other memorized EM drop": cell(d, "del_other_em_drop", 1),
                     "DEL: non-memorized NLL change": cell(d, "del_non_memorized_nll_change"),
                     "seconds": round(r["seconds"], 1)})
    parts.append(table(rows))
    parts.append(f'<p class="guide">INJ: new paragraphs are fine-tuned into the model through a random share of the MLP '
                 "neurons of every layer (every other weight unchanged, checked); each localizer then ranks the neurons "
                 "for those paragraphs and its top ones in each layer (as many as were planted there) are compared with "
                 "the planted set: recall 1 = found them all, random's expected recall = the share. DEL: each localizer "
                 "localizes some of the model's own memorized paragraphs, the same share of neurons is dropped, and "
                 "those paragraphs should lose their EM while the other memorized paragraphs keep theirs. "
                 f"Injections that recited every paragraph: {s['injection_success']:.0%}. Mean over seeds with a "
                 "bootstrap 95% interval.</p>")
    result = folder.load("localization", LocalizationBenchmarkResult, "localize")
    parts.append(rb.figure(result.plot(), "Recall of the planted neurons against their share per layer: higher is "
                                          "better, random sits on the share itself."))
    parts.append(rb.figure(result.plot_del(), "Dropping each localizer's neurons: a localizer that localizes sits high "
                                              "(the injected paragraphs forgotten) and to the left (other memorized "
                                              "paragraphs kept); marker size grows with the non-memorized NLL change."))
    if "weight" in s:
        parts.append("<h3>Single weights (the paper's top-k granularity)</h3>" + table(
            [{"localizer": r["localizer"], "ratio": r["ratio"], "recall [95% CI]": cell(r, "recall")} for r in s["weight"]]))
    parts.append(f'<p class="guide">Seconds per localizer over the stage: {html.escape(str(s["seconds"]))}.</p>')


ROW = register_stage(Stage(
    "localize", localize_stage, "every localizer scored against planted neurons (INJ) and dropped (DEL) -> "
    "localization.safetensors", config=LocalizeConfig,
    files={"localization": "localization.safetensors", "localization_checkpoint": "localization.blocks.partial"},
    title="Localization against planted truth (INJ / DEL)", report=localize_report, needs=("scan",)))
