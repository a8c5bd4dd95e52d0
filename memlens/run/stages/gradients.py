"""The gradient stage: NLL gradient maps of memorized and non-memorized paragraphs
(:class:`memlens.GradientMap`), with the profiles by EM range and the gradient similarity drawn
from the same backward passes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from memlens.analyses.gradients import GradientMap
from memlens.core.defaults import AGGREGATIONS, one_of
from memlens.run.settings import StageConfig, _runtime
from memlens.run.stage import Stage, register_stage, saved
from memlens.run.stages.common import splits
from memlens.viz.html import table

if TYPE_CHECKING:
    from memlens.run.context import RunContext
    from memlens.run.folder import RunFolder
    from memlens.viz.html import ReportBuilder


@dataclass(frozen=True, kw_only=True)
class GradientsConfig(StageConfig):
    """Settings of the gradient stage (:class:`memlens.GradientMap`).

    Attributes:
        max_paragraphs: memorized and non-memorized paragraphs mapped (at most, each).
        aggregation: component score: ``max`` (the paper's), ``l1``, ``l2`` or ``mean``.
        max_per_em_bin: paragraphs per EM range in the profiles by EM (the paper's Fig. 9).
        similarity: also map the cosine similarity of memorized vs non-memorized gradients per
            component (:class:`memlens.GradientSimilarity`, the code's cosine notebook).
        batch_size: paragraphs per backward pass (runtime).
    """

    stage: ClassVar[str] = "gradients"
    max_paragraphs: int = 32
    aggregation: str = "max"
    max_per_em_bin: int = 32
    similarity: bool = True
    batch_size: int = _runtime(GradientMap.DEFAULT_BATCH_SIZE)

    def validate(self) -> None:
        self._positive_int("max_paragraphs", "max_per_em_bin", "batch_size")
        self._require("aggregation", self.aggregation in AGGREGATIONS, f"must be {one_of(AGGREGATIONS)}")


def gradients_stage(ctx: "RunContext") -> dict[str, Any]:
    """NLL gradient maps of memorized and non-memorized paragraphs, their comparison, the
    profiles by EM range and the gradient similarity -> ``gradients_{memorized,non_memorized}.safetensors``,
    ``gradient_profiles_by_em.safetensors``, ``gradient_similarity.safetensors``. Each set is
    differentiated once: the maps keep their signed weight gradients in memory (not in the
    files), which the profiles and the similarity reuse."""
    from memlens.analyses.gradient_similarity import GradientSimilarity, GradientSimilarityResult
    from memlens.analyses.gradients import GradientMapResult
    from memlens.analyses.profiles import EMRangeProfiles, profiles_by_em_range

    cfg = ctx.config.gradients
    mem, non = splits(ctx, cfg.max_paragraphs)
    gm = GradientMap(ctx.model, batch_size=cfg.batch_size, progress=ctx.progress)
    fresh: dict[str, GradientMapResult] = {}  # maps computed now, with their signed weight gradients

    def compute(group: Any, name: str) -> GradientMapResult:
        fresh[name] = gm.run(group, aggregation=cfg.aggregation, signed_weight_grads=True, label=name)
        return dataclasses.replace(fresh[name], weight_grads=None, weight_grads_signed=False)

    maps = {name: saved(ctx, ctx.folder.file("gradient_map", name), GradientMapResult,
                        lambda group=group, name=name: compute(group, name))
            for name, group in (("memorized", mem), ("non_memorized", non))}
    profiles = saved(ctx, ctx.folder.file("gradient_profiles"), EMRangeProfiles,
                     lambda: profiles_by_em_range(ctx.model, ctx.scan_result(), max_per_bin=cfg.max_per_em_bin,
                                                  progress=ctx.progress, maps=list(fresh.values()),
                                                  aggregation=cfg.aggregation, batch_size=cfg.batch_size))
    out = {"memorized_vs_non_memorized": maps["memorized"].compare(maps["non_memorized"]).summary(),
           "top_memorized": maps["memorized"].top(5).to_dict(orient="records"),
           "by_em_range": profiles.rows}
    if cfg.similarity:
        def similarity() -> GradientSimilarityResult:
            sim = GradientSimilarity(ctx.model, batch_size=cfg.batch_size, progress=ctx.progress)
            if len(fresh) == 2:
                return sim.from_maps(fresh["memorized"], fresh["non_memorized"])
            return sim.run(mem, non)  # the maps were read back from an interrupted attempt

        out["similarity"] = saved(ctx, ctx.folder.file("gradient_similarity"), GradientSimilarityResult,
                                  similarity).summary()
    return out


def gradients_report(rb: "ReportBuilder", parts: list[str], folder: "RunFolder", s: dict[str, Any]) -> None:
    from memlens.analyses.gradients import GradientMapResult
    from memlens.viz.gradients import plot_layer_profiles

    maps = {n: folder.load("gradient_map", GradientMapResult, "gradients", n) for n in ("memorized", "non_memorized")}
    cmp = s["memorized_vs_non_memorized"]
    parts.append(table([{"set": label.replace("_", "-"), "total gradient": cmp["total"][label],
                         "share in the lower half of the layers": cmp["lower_half_share"][label]}
                        for label in cmp["labels"]]))
    parts.append(rb.figure(plot_layer_profiles(list(maps.values()), ["memorized", "non-memorized"]),
                           "Share of the total gradient per layer: the paper finds memorized paragraphs' gradients "
                           "relatively larger in lower layers."))
    for name, gm in maps.items():
        parts.append(rb.figure(gm.plot(title=f"Gradient map, {name.replace('_', '-')} paragraphs"),
                               "Each cell is one component (head matrix or MLP) of one layer; brighter = larger "
                               "max |dNLL/dW|."))
    if folder.file("gradient_profiles").exists():
        from memlens.analyses.profiles import EMRangeProfiles

        profiles = folder.load("gradient_profiles", EMRangeProfiles, "gradients")
        if profiles.rows:
            parts.append(table([{k: r[k] for k in ("em_range", "n", "mean_nll", "total", "score_var") if k in r}
                                for r in profiles.rows]))
            parts.append(rb.figure(profiles.plot(), "The paper's Fig. 9: where in depth the gradient of paragraphs "
                                                    "with a given EM sits (share of the total per layer)."))
            if any("attn_0" in r for r in profiles.rows):
                parts.append(rb.figure(profiles.plot_components(), "Fig. 9 as the official code draws it: per EM "
                                       "range, the |gradient| of each layer's attention and MLP weights, and per "
                                       "component kind the |gradient| sum and the variance of the gradient."))
    if "similarity" in s and folder.file("gradient_similarity").exists():
        from memlens.analyses.gradient_similarity import GradientSimilarityResult

        sim = folder.load("gradient_similarity", GradientSimilarityResult, "gradients")
        low = s["similarity"]["least_similar"]
        where = f"; least similar: L{low['layer']} {low['component']}" + (f" H{low['head']}" if low["head"] >= 0 else "") \
            + f" ({low['cosine']:.2f})" if low else ""
        parts.append(rb.figure(sim.plot(), "Cosine similarity between the NLL gradients of memorized and non-memorized "
                                           f"paragraphs per component (mean {s['similarity']['mean']:.2f}{where}): red "
                                           "= the two sets pull the weights the same way, blue = opposite ways."))


ROW = register_stage(Stage(
    "gradients", gradients_stage, "gradient maps of memorized vs non-memorized paragraphs -> gradients_*.safetensors",
    config=GradientsConfig, files={"gradient_map": "gradients_{name}.safetensors",
                                   "gradient_profiles": "gradient_profiles_by_em.safetensors",
                                   "gradient_similarity": "gradient_similarity.safetensors"},
    title="Gradient maps: memorized vs non-memorized", report=gradients_report, needs=("scan",)))
