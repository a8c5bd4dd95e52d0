"""The perturbation stage: single-token prefix perturbations (:class:`memlens.PrefixPerturber`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from memlens.analyses.perturb import PrefixPerturber
from memlens.core.defaults import N_SAMPLES, STRATEGIES, WORST_TIES, one_of
from memlens.core.io import write_json_atomic
from memlens.run.report import views_html
from memlens.run.settings import StageConfig, _runtime
from memlens.run.stage import Stage, register_stage, saved
from memlens.run.stages.common import splits, view_dict
from memlens.viz.html import table

if TYPE_CHECKING:
    from memlens.run.context import RunContext
    from memlens.run.folder import RunFolder
    from memlens.viz.html import ReportBuilder


@dataclass(frozen=True, kw_only=True)
class PerturbConfig(StageConfig):
    """Settings of the perturbation stage (:class:`memlens.PrefixPerturber`).

    Attributes:
        max_paragraphs: memorized and non-memorized paragraphs swept (at most, each).
        n_samples: replacements per prefix position.
        strategy: ``random``, ``second_best``, ``similar`` or ``cumulative``.
        skip_position_0: never perturb prefix position 0 (the official code's).
        allow_original: random replacements may draw the original token (the code's).
        worst_ties: which equally damaging perturbation is a paragraph's worst: ``nll`` (the
            higher NLL) or ``earliest`` (the earliest position, the code's).
        batch_size: perturbed paragraphs per forward pass (runtime).
    """

    stage: ClassVar[str] = "perturb"
    max_paragraphs: int = 16
    n_samples: int = N_SAMPLES
    strategy: str = "random"
    skip_position_0: bool = False
    allow_original: bool = False
    worst_ties: str = "nll"
    batch_size: int = _runtime(PrefixPerturber.DEFAULT_BATCH_SIZE)

    def validate(self) -> None:
        self._positive_int("max_paragraphs", "n_samples", "batch_size")
        self._require("strategy", self.strategy in STRATEGIES, f"must be {one_of(STRATEGIES)}")
        self._require("worst_ties", self.worst_ties in WORST_TIES, f"must be {one_of(WORST_TIES)}")
        for name in ("skip_position_0", "allow_original"):
            self._require(name, isinstance(getattr(self, name), bool), "must be true or false")


def perturb_stage(ctx: "RunContext") -> dict[str, Any]:
    """Single-token prefix perturbations (every position, ``n_samples`` each) of memorized
    and non-memorized paragraphs -> ``perturbation_*.safetensors``; the worst perturbation of each
    memorized paragraph with its new continuation -> ``perturbed_memorized.jsonl``; the token
    view of the most fragile positions -> ``perturb_views.json``."""
    from memlens.analyses.perturb import PerturbationResult
    from memlens.viz.circuits import colored_tokens_view

    cfg = ctx.config.perturb
    mem, non = splits(ctx, cfg.max_paragraphs)
    pert = PrefixPerturber(ctx.model, batch_size=cfg.batch_size)
    res = {name: saved(ctx, ctx.folder.file("perturbation", name), PerturbationResult,
                        lambda group=group: pert.run(group, strategy=cfg.strategy, n_samples=cfg.n_samples,
                                                     seed=ctx.config.seed, progress=ctx.progress,
                                                     skip_position_0=cfg.skip_position_0,
                                                     allow_original=cfg.allow_original))
           for name, group in (("memorized", mem), ("non_memorized", non))}
    edited_path = ctx.folder.file("perturbed_memorized")
    if not edited_path.exists() and cfg.strategy != "cumulative":
        pert.perturbed_paragraphs(mem, result=res["memorized"], ties=cfg.worst_ties).save(edited_path)
    drops = torch.stack([res["memorized"].paragraph_drops(i) for i in range(len(mem))])
    worst = int(drops.nan_to_num(-1.0).max(dim=1).values.argmax())
    P = mem.prefix_len
    views = [colored_tokens_view(
        ctx.model.to_str_tokens(mem.tokens[worst, :P]), drops[worst].nan_to_num(0.0),
        title=f"Most fragile positions of memorized paragraph {mem.ids[worst]}",
        caption="Each prefix token shaded by the mean EM drop (tokens) when it alone is replaced: dark = fragile.",
        min_value=0.0, max_value=float(mem.continuation_len)),
        colored_tokens_view(
        [str(p) for p in range(P)], drops.nanmean(0).nan_to_num(0.0),
        title="Fragility by prefix position, mean over memorized paragraphs",
        caption="Prefix positions 0..P-1 shaded by the mean EM drop: the paper finds a few positions matter most.",
        min_value=0.0, max_value=float(mem.continuation_len))]
    write_json_atomic(ctx.folder.file("perturb_views"), [view_dict(v) for v in views])
    worst_rows = res["memorized"].worst(cfg.worst_ties)
    return {"mean_em_drop_memorized": round(res["memorized"].mean_em_drop(), 2),
            "mean_em_drop_non_memorized": round(res["non_memorized"].mean_em_drop(), 2),
            "worst_memorized": worst_rows[["paragraph", "position", "token", "em"]].to_dict(orient="records")}


def perturb_report(rb: "ReportBuilder", parts: list[str], folder: "RunFolder", s: dict[str, Any]) -> None:
    from memlens.analyses.perturb import PerturbationResult

    mem = folder.load("perturbation", PerturbationResult, "perturb", "memorized")
    non = folder.load("perturbation", PerturbationResult, "perturb", "non_memorized")
    parts.append(table([{"set": "memorized", "mean EM drop": s["mean_em_drop_memorized"]},
                        {"set": "non-memorized", "mean EM drop": s["mean_em_drop_non_memorized"]}]))
    parts.append(rb.figure(mem.plot(non, labels=("memorized", "non-memorized")),
                           "Mean EM lost when the token at one prefix position is replaced by a random token; "
                           "memorized paragraphs resist most positions."))
    parts.append(rb.figure(mem.plot_distribution(non), "Distribution of EM drops over all perturbations of each set."))
    parts.extend(views_html(folder, "perturb_views", "perturb"))


ROW = register_stage(Stage(
    "perturb", perturb_stage, "single-token prefix perturbations -> perturbation_*.safetensors, perturbed_memorized.jsonl",
    config=PerturbConfig, files={"perturbation": "perturbation_{name}.safetensors",
                                 "perturbed_memorized": "perturbed_memorized.jsonl",
                                 "perturb_views": "perturb_views.json"},
    title="Prefix perturbation", report=perturb_report, needs=("scan",)))
