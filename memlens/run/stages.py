"""The built-in stages of ``memlens run`` and the Stage table's rows for them.

Each stage takes the :class:`~memlens.run.context.RunContext`, writes its result files into the
run folder (atomically, at the paths :class:`~memlens.run.folder.RunFolder` gives) and returns a
JSON-able summary. A stage reuses any of its files already in the folder, so an interrupted stage
resumes where it stopped. The rows at the end of this module are the table: order, settings,
help, files and report section of each stage."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from memlens.core.io import write_json_atomic
from memlens.run.report import (gradients_section, heads_section, perturb_section, scan_section, unlearn_section,
                                 write_report)
from memlens.run.config import GradientsConfig, HeadsConfig, PerturbConfig, ScanConfig, UnlearnConfig
from memlens.run.folder import FILES
from memlens.run.stage import Stage, StageSkipped, register_stage, saved

if TYPE_CHECKING:
    from memlens.core.data import ParagraphSet
    from memlens.run.context import RunContext


def scan_stage(ctx: "RunContext") -> dict[str, Any]:
    """EM and NLL of every paragraph -> ``scan.safetensors`` (streamed; an interrupted scan
    resumes). With the model's own paragraphs, also the scan against its ground truth."""
    from memlens.analyses.scan import scan

    cfg = ctx.config.scan
    result = scan(ctx.model, ctx.paragraphs(), **cfg.scan_kwargs(), out=ctx.folder.file("scan"), progress=ctx.progress)
    summary: dict[str, Any] = {"scan": result.summary()}
    if ctx.model.dtype != torch.float32:
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
            "max_abs_diff": int((decoded - scanned).abs().max()), "dtype": str(model.dtype).replace("torch.", "")}


def _splits(ctx: "RunContext", max_paragraphs: int) -> tuple[ParagraphSet, ParagraphSet]:
    """The scan's memorized and non-memorized paragraphs, at most ``max_paragraphs`` of each;
    :class:`StageSkipped` when either is empty."""
    res = ctx.scan_result()
    mem, non = res.memorized(), res.non_memorized()
    if len(mem) == 0 or len(non) == 0:
        raise StageSkipped(f"needs memorized and non-memorized paragraphs (found {len(mem)} / {len(non)})")
    return mem[:max_paragraphs], non[:max_paragraphs]


def gradients_stage(ctx: "RunContext") -> dict[str, Any]:
    """NLL gradient maps of memorized and non-memorized paragraphs, their comparison and the
    profiles by EM range -> ``gradients_{memorized,non_memorized}.safetensors``,
    ``gradient_profiles_by_em.safetensors``."""
    from memlens.analyses.gradients import GradientMap, GradientMapResult
    from memlens.analyses.profiles import EMRangeProfiles, profiles_by_em_range

    cfg = ctx.config.gradients
    mem, non = _splits(ctx, cfg.max_paragraphs)
    maps = {name: saved(ctx, ctx.folder.file("gradient_map", name), GradientMapResult,
                         lambda group=group, name=name: GradientMap(ctx.model).compute(
                             group, aggregation=cfg.aggregation, batch_size=cfg.batch_size, keep_weight_grads=False,
                             progress=ctx.progress, label=name))
            for name, group in (("memorized", mem), ("non_memorized", non))}
    profiles = saved(ctx, ctx.folder.file("gradient_profiles"), EMRangeProfiles,
                     lambda: profiles_by_em_range(ctx.model, ctx.scan_result(), max_per_bin=cfg.max_per_em_bin,
                                                  progress=ctx.progress, maps=list(maps.values()),
                                                  aggregation=cfg.aggregation, batch_size=cfg.batch_size))
    out = {"memorized_vs_non_memorized": maps["memorized"].compare(maps["non_memorized"]).summary(),
           "top_memorized": maps["memorized"].top(5).to_dict(orient="records"),
           "by_em_range": profiles.rows}
    if cfg.similarity:
        from memlens.analyses.gradient_similarity import GradientSimilarity, GradientSimilarityResult

        sim = saved(ctx, ctx.folder.file("gradient_similarity"), GradientSimilarityResult,
                    lambda: GradientSimilarity(ctx.model, batch_size=cfg.batch_size).compute(mem, non, progress=ctx.progress))
        out["similarity"] = sim.summary()
    return out


def perturb_stage(ctx: "RunContext") -> dict[str, Any]:
    """Single-token prefix perturbations (every position, ``n_samples`` each) of memorized
    and non-memorized paragraphs -> ``perturbation_*.safetensors``; the worst perturbation of each
    memorized paragraph with its new continuation -> ``perturbed_memorized.jsonl``; the token
    view of the most fragile positions -> ``perturb_views.json``."""
    from memlens.analyses.perturb import PerturbationResult, PrefixPerturber
    from memlens.viz.circuits import colored_tokens_view

    cfg = ctx.config.perturb
    mem, non = _splits(ctx, cfg.max_paragraphs)
    pert = PrefixPerturber(ctx.model, batch_size=cfg.batch_size)
    res = {name: saved(ctx, ctx.folder.file("perturbation", name), PerturbationResult,
                        lambda group=group: pert.sweep(group, strategy=cfg.strategy, n_samples=cfg.n_samples,
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
    write_json_atomic(ctx.folder.file("perturb_views"), [_view_dict(v) for v in views])
    worst_rows = res["memorized"].worst(cfg.worst_ties)
    return {"mean_em_drop_memorized": round(res["memorized"].mean_em_drop(), 2),
            "mean_em_drop_non_memorized": round(res["non_memorized"].mean_em_drop(), 2),
            "worst_memorized": worst_rows[["paragraph", "position", "token", "em"]].to_dict(orient="records")}


def heads_stage(ctx: "RunContext") -> dict[str, Any]:
    """HeadLocalizer on the memorized paragraphs (perturbed versions from the perturbation stage
    when present) -> ``heads.safetensors``; circuitsvis views of the top head -> ``head_views.json``."""
    from memlens.core.data import ParagraphSet
    from memlens.analyses.frequency import UnigramCounts
    from memlens.analyses.head_ablation import HeadAblation
    from memlens.analyses.heads import HeadLocalizer, HeadReport

    cfg = ctx.config.heads
    mem, non = _splits(ctx, cfg.max_paragraphs)
    views_path = ctx.folder.file("head_views")
    unigram = UnigramCounts.default_for(ctx.model, ctx.paragraphs())

    perturbed_path = ctx.folder.file("perturbed_memorized")
    perturbed = ParagraphSet.load(perturbed_path) if perturbed_path.exists() else None

    def localize() -> HeadReport:
        report = HeadLocalizer(ctx.model, batch_size=cfg.batch_size).localize(
            mem, non, perturbed=perturbed, unigram=unigram, max_paragraphs=cfg.max_paragraphs,
            patch_kinds=cfg.patch_kinds, causal_share=cfg.causal_share, progress=ctx.progress,
            exact_top=cfg.exact_top, patch_positions=cfg.patch_positions)
        if cfg.ablation:
            patched = ~report.columns["patching"].isnan() if "patching" in report.columns else None
            heads = None if patched is None or bool(patched.all()) else [tuple(x) for x in patched.nonzero().tolist()]
            report = report.with_columns(ablation_em_drop=HeadAblation(
                ctx.model, batch_size=cfg.batch_size, progress=ctx.progress).run(mem, heads=heads).em_drop)
        return report

    report = saved(ctx, ctx.folder.file("heads"), HeadReport, localize)
    top = report.top(1).iloc[0]
    L, H = int(top["layer"]), int(top["head"])
    if not views_path.exists():
        from memlens.analyses.attention_views import head_attention_views

        views = []
        for i in range(min(2, len(mem))):
            views += report.attention_view(ctx.model, mem, L, H, paragraph=i, unigram=unigram)
        if cfg.view_paragraphs:
            views += head_attention_views(ctx.model, mem, L, H, max_paragraphs=cfg.view_paragraphs, unigram=unigram,
                                          batch_size=cfg.batch_size)
        write_json_atomic(views_path, [_view_dict(v) for v in views])
    drop = report.columns.get("ablation_em_drop")
    out = report.summary()
    if drop is not None:
        al, ah = divmod(int(torch.nan_to_num(drop, nan=-float("inf")).argmax()), report.n_heads)
        out["ablation_top_head"] = {"layer": al, "head": ah, "em_drop": round(float(drop[al, ah]), 2),
                                    "ranks": report.where(al, ah), "heads_ablated": int((~drop.isnan()).sum())}
    if "rare_tau" in report.columns:
        tau = report.columns["rare_tau"]
        rl, rh = divmod(int(torch.nan_to_num(tau, nan=float("inf")).argmin()), report.n_heads)
        out["rare_token_head"] = {"layer": rl, "head": rh, "kendall_tau": round(float(tau[rl, rh]), 3), "ranks": report.where(rl, rh)}
    if cfg.rare_setup == "paper":
        out["rare_attention_paper"] = _paper_rare_attention(ctx)
    if cfg.pair_gradients and perturbed is not None:
        pairs = _pairs_or_none(mem, perturbed)
        if pairs:
            from memlens.analyses.pair_gradients import PairGradientResult, pair_activation_gradients

            pg = saved(ctx, ctx.folder.file("pair_gradients"), PairGradientResult,
                       lambda: pair_activation_gradients(ctx.model, pairs, progress=ctx.progress))
            out["pair_gradients"] = pg.summary()
    return out


def _pairs_or_none(mem: "ParagraphSet", perturbed: "ParagraphSet") -> list | None:
    """The patch pairs of the memorized paragraphs whose perturbed version is in ``perturbed``
    and changes the continuation; None when there is none."""
    import warnings

    from memlens.analyses.patching import make_patch_pairs
    from memlens.core.errors import InputError

    ids = set(mem.ids)
    keep = [i for i, o in enumerate(perturbed.metadata.get("original", [])) if str(o) in ids]
    if not keep:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unchanged continuations are left out, as in patching
        try:
            return make_patch_pairs(mem, perturbed[keep])
        except InputError:
            return None


def _paper_rare_attention(ctx: "RunContext") -> dict[str, Any]:
    """The paper's Fig. 7 on its own inputs -> ``rare_attention.safetensors``: the head with the
    most negative rank tau, its tau, entropy and token-level taus by count set."""
    from memlens.analyses.frequency import UnigramCounts
    from memlens.analyses.rare_attention import RareAttentionResult, paper_rare_token_setup, rare_token_attention

    cfg = ctx.config.heads
    res = ctx.scan_result()
    paragraphs, counts = paper_rare_token_setup(res.memorized(), res.non_memorized(), ctx.model.vocab_size,
                                                n=cfg.rare_paragraphs)
    result = saved(ctx, ctx.folder.file("rare_attention"), RareAttentionResult, lambda: rare_token_attention(
        ctx.model, paragraphs, counts, batch_size=cfg.batch_size, progress=ctx.progress, ranks=cfg.rare_ranks,
        reduce=cfg.rare_reduce))
    layer, head = result.rarest_head()
    by_set = {"full": counts, "memorized": UnigramCounts.from_paragraphs(res.memorized(), ctx.model.vocab_size),
              "non_memorized": UnigramCounts.from_paragraphs(res.non_memorized(), ctx.model.vocab_size)}
    taus = result.token_tau_by_counts(paragraphs, by_set).set_index(["layer", "head"]).loc[(layer, head)]
    return {"layer": layer, "head": head, "n_paragraphs": len(paragraphs),
            "kendall_tau": round(float(result.rank_tau[layer, head]), 4),
            "entropy": round(float(result.entropy[layer, head]), 4),
            "lowest_entropy_head": list(divmod(int(result.entropy.argmin()), result.entropy.shape[1])),
            "token_tau": {k.removeprefix("tau_"): round(float(v), 4) for k, v in taus.items()}}


def unlearn_stage(ctx: "RunContext") -> dict[str, Any]:
    """Sparse unlearning and editing, one target per trial (objective x masks, the paper's Fig. 5)
    -> ``unlearn.safetensors``; with ``tradeoff_lrs``, the masks' trade-off curves ->
    ``unlearn_tradeoff.safetensors``; with ``noise_scales``, the noise intervention on the targets'
    masks -> ``noise.safetensors``. Editing (to the continuation that follows the target's worst
    prefix perturbation) needs more movement than unlearning: it runs ``edit_steps`` at ``edit_lr``."""
    from memlens.core.data import ParagraphSet
    from memlens.analyses.mask_comparison import MaskComparison, MaskTradeoff, compare_masks, mask_tradeoff
    from memlens.analyses.noise import NoiseResult

    cfg = ctx.config.unlearn
    res = ctx.scan_result()
    mem, non = res.memorized(), res.non_memorized()
    if len(mem) == 0 or len(non) == 0:
        raise StageSkipped(f"needs memorized and non-memorized paragraphs (found {len(mem)} / {len(non)})")
    targets = mem[: cfg.n_targets]
    fresh = cfg.retain_design == "fresh"
    if fresh and len(non) < cfg.retain_paragraphs:
        raise StageSkipped(f"a fresh retain batch of {cfg.retain_paragraphs} needs as many non-memorized paragraphs "
                           f"(found {len(non)})")
    pool = cfg.retain_set(non)
    common = dict(other_memorized=mem[: max(cfg.n_targets, 16)], progress=ctx.progress,
                  **cfg.compare_kwargs(seed=ctx.config.seed))

    def compare() -> MaskComparison:
        ckpt = ctx.folder.file("unlearn_checkpoint")  # each finished run: an interrupted stage resumes
        tables = [compare_masks(ctx.model, targets, pool, objectives=("unlearn",), masks=cfg.masks, steps=cfg.steps,
                                lr=cfg.lr, checkpoint=ckpt, **common)]
        perturbed_path = ctx.folder.file("perturbed_memorized")
        if cfg.edit and perturbed_path.exists():
            pset = ParagraphSet.load(perturbed_path)
            by_original = {str(o): i for i, o in enumerate(pset.metadata.get("original", []))}
            if all(t in by_original for t in targets.ids):
                tables.append(compare_masks(
                    ctx.model, targets, pool, objectives=("edit",), masks=cfg.edit_masks,
                    perturbed=pset[[by_original[t] for t in targets.ids]], steps=cfg.edit_steps, lr=cfg.edit_lr,
                    checkpoint=ckpt, **common))
        return MaskComparison(rows=[r for t in tables for r in t.rows], targets=tables[0].targets,
                              trials=[r for t in tables for r in t.trials], provenance=tables[0].provenance)

    table = saved(ctx, ctx.folder.file("unlearn"), MaskComparison, compare)
    ctx.folder.file("unlearn_checkpoint").unlink(missing_ok=True)
    settings = {"unlearn": {"steps": cfg.steps, "lr": cfg.lr}}
    if any(r["objective"] == "edit" for r in table.rows):
        settings["edit"] = {"steps": cfg.edit_steps, "lr": cfg.edit_lr}
    summary = table.summary() | {"settings": settings, "design": {
        "trials": cfg.n_targets, "retain": cfg.retain_design, "retain_paragraphs": cfg.retain_paragraphs,
        "objective": f"-{cfg.nll_scale:g} NLL + {cfg.kl_weight:g} KL({cfg.kl_direction}, {cfg.kl_reduction})",
        "weight_decay": cfg.weight_decay}}
    if cfg.tradeoff_lrs:
        tradeoff = saved(ctx, ctx.folder.file("unlearn_tradeoff"), MaskTradeoff, lambda: mask_tradeoff(
            ctx.model, targets, pool, cfg.tradeoff_lrs, masks=[m for m in cfg.masks if m != "selective"] or cfg.masks,
            steps=cfg.steps, checkpoint=ctx.folder.file("unlearn_checkpoint"),
            **{k: v for k, v in common.items() if k != "other_memorized"}))
        summary["tradeoff"] = tradeoff.summary()["table"]
    if cfg.noise_scales:
        noise = saved(ctx, ctx.folder.file("noise"), NoiseResult,
                      lambda: _noise_intervention(ctx, targets, pool[: cfg.retain_paragraphs], cfg))
        summary["noise"] = noise.summary()
    return summary


def _noise_intervention(ctx: "RunContext", targets: Any, retain: Any, cfg: Any) -> Any:
    """Noise on the top-k / selective / random masks of the targets' contrastive gradient."""
    from memlens.analyses.gradients import GradientMap
    from memlens.analyses.noise import NoiseIntervention
    from memlens.analyses.unlearn import SparseFineTuner

    gmap = GradientMap(ctx.model, progress=ctx.progress).compute(targets, contrast=retain, progress=False)
    tuner = SparseFineTuner(ctx.model, progress=ctx.progress)
    masks = {kind: tuner.make_mask(kind, cfg.fraction, gmap, seed=ctx.config.seed, random_draw=cfg.random_mask,
                                   selectivity_floor=cfg.selectivity_floor,
                                   sensitivity=tuner.retain_sensitivity(retain) if kind == "selective" else None)
             for kind in cfg.noise_masks}
    return NoiseIntervention(ctx.model).run(targets, retain, masks, cfg.noise_scales, draws=cfg.noise_draws,
                                            seed=ctx.config.seed, reference=cfg.noise_reference, progress=ctx.progress)


def _view_dict(view) -> dict[str, Any]:
    return {"component": view.component, "props": view.props, "title": view.title, "caption": view.caption}


def report_stage(ctx: "RunContext") -> dict[str, Any]:
    """The offline HTML report of the run folder -> ``report.html``."""
    path = write_report(ctx.folder)
    return {"path": str(path), "bytes": path.stat().st_size}


def _files(*keys: str) -> dict[str, str]:
    return {k: FILES[k] for k in keys}


# --- the Stage table (running order) ---------------------------------------------------------------
for _row in (
    Stage("scan", scan_stage, "EM and NLL of every paragraph -> scan.safetensors", config=ScanConfig,
          files=_files("scan"), title="Scan: which paragraphs are memorized", section=scan_section),
    Stage("gradients", gradients_stage,
          "gradient maps of memorized vs non-memorized paragraphs -> gradients_*.safetensors", config=GradientsConfig,
          files=_files("gradient_map", "gradient_profiles", "gradient_similarity"), title="Gradient maps: memorized vs non-memorized", section=gradients_section, needs=("scan",)),
    Stage("perturb", perturb_stage,
          "single-token prefix perturbations -> perturbation_*.safetensors, perturbed_memorized.jsonl",
          config=PerturbConfig, files=_files("perturbation", "perturbed_memorized", "perturb_views"), title="Prefix perturbation", section=perturb_section, needs=("scan",)),
    Stage("heads", heads_stage,
          "HeadLocalizer: per-head evidence and combined rank -> heads.safetensors, head_views.json",
          config=HeadsConfig, files=_files("heads", "head_views", "rare_attention", "pair_gradients"), title="Heads: the memorization head and its evidence", section=heads_section,
          needs=("scan",)),
    Stage("unlearn", unlearn_stage,
          "sparse unlearning/editing, all vs top-k vs random weights -> unlearn.safetensors", config=UnlearnConfig,
          files=_files("unlearn", "unlearn_checkpoint", "unlearn_tradeoff", "noise"), title="Sparse unlearning and editing", section=unlearn_section, needs=("scan",)),
    Stage("report", report_stage, "the offline HTML report of a run folder -> report.html"),
):
    register_stage(_row)
