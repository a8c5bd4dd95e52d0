"""The stages of ``memlens run``. Each takes the :class:`~memlens.pipeline.RunContext`, writes its
result files into the run folder (atomically) and returns a JSON-able summary. A stage reuses
any of its files already in the folder, so an interrupted stage resumes where it stopped."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from memlens.io import atomic_path, write_json_atomic

if TYPE_CHECKING:
    from memlens.data import ParagraphSet
    from memlens.pipeline import RunContext


def organism_ground_truth(result, info) -> dict[str, Any]:
    """EM against the organism's ground truth: memorization rate per duplication level, the
    rank correlation of EM with copies, and the memorized share of seen-once and unseen text."""
    from memlens.stats import spearman

    df = result.to_dataframe()
    planted = df[df["group"] == "planted"]
    per_level = {
        int(c): {"n": int(len(g)), "memorized": int((g["split"] == "memorized").sum()), "mean_em": round(float(g["em"].mean()), 2)}
        for c, g in planted.groupby("copies")
    }
    out: dict[str, Any] = {"planted_by_copies": per_level,
                           "spearman_em_vs_copies": round(spearman(planted["copies"].tolist(), planted["em"].tolist()), 3)}
    for group in ("background", "held_out"):
        g = df[df["group"] == group]
        out[group] = {"n": int(len(g)), "frac_em_ge_30": round(float((g["em"] >= 30).mean()), 4),
                      "mean_em": round(float(g["em"].mean()), 3), "mean_nll": round(float(g["nll"].mean()), 4)}
    return out


def scan_stage(ctx: "RunContext") -> dict[str, Any]:
    """EM and NLL of every paragraph -> ``scan.jsonl`` (streamed; an interrupted scan resumes)."""
    from memlens.scan import scan

    result = scan(ctx.model, ctx.paragraphs(), out=ctx.out / "scan.jsonl", progress=ctx.progress)
    summary: dict[str, Any] = {"scan": result.summary()}
    info = ctx.model.organism_info
    if info is not None and ctx.paragraphs_file is None:
        summary["ground_truth"] = organism_ground_truth(result, info)
        summary["organism"] = info.summary()
    return summary


class StageSkipped(Exception):
    """A stage has nothing to work on (e.g. no memorized paragraphs); the message says why."""


def _splits(ctx: "RunContext", max_paragraphs: int) -> tuple[ParagraphSet, ParagraphSet]:
    """The scan's memorized and non-memorized paragraphs, at most ``max_paragraphs`` of each;
    :class:`StageSkipped` when either is empty."""
    res = ctx.scan_result()
    mem, non = res.memorized(), res.non_memorized()
    if len(mem) == 0 or len(non) == 0:
        raise StageSkipped(f"needs memorized and non-memorized paragraphs (found {len(mem)} / {len(non)})")
    return mem[:max_paragraphs], non[:max_paragraphs]


def gradients_stage(ctx: "RunContext", max_paragraphs: int = 32) -> dict[str, Any]:
    """NLL gradient maps of memorized and non-memorized paragraphs, their comparison and the
    profiles by EM range -> ``gradients_*.pt``, ``gradient_profiles_by_em.csv``."""
    from memlens.gradients import GradientMap, GradientMapResult, profiles_by_em_range

    mem, non = _splits(ctx, max_paragraphs)
    groups = {"memorized": mem, "non_memorized": non}
    maps = {}
    for name, group in groups.items():
        path = ctx.out / f"gradients_{name}.pt"
        if path.exists():
            maps[name] = GradientMapResult.load(path)
        else:
            maps[name] = GradientMap(ctx.model).compute(group, keep_weight_grads=False, progress=ctx.progress)
            maps[name].label = name
            maps[name].save(path)
    profiles = ctx.out / "gradient_profiles_by_em.csv"
    if profiles.exists():
        import pandas as pd

        df = pd.read_csv(profiles)
    else:
        df = profiles_by_em_range(ctx.model, ctx.scan_result(), progress=False)
        with atomic_path(profiles) as tmp:
            df.to_csv(tmp, index=False)
    return {"memorized_vs_non_memorized": maps["memorized"].compare(maps["non_memorized"]).summary(),
            "top_memorized": maps["memorized"].top(5).to_dict(orient="records"),
            "by_em_range": df.to_dict(orient="records")}


def perturb_stage(ctx: "RunContext", max_paragraphs: int = 16, n_samples: int = 4) -> dict[str, Any]:
    """Random single-token prefix perturbations (every position, ``n_samples`` each) of memorized
    and non-memorized paragraphs -> ``perturbation_*.jsonl``; the worst perturbation of each
    memorized paragraph with its new continuation -> ``perturbed_memorized.jsonl``; the token
    view of the most fragile positions -> ``perturb_views.json``."""
    from memlens.perturb import PerturbationResult, PrefixPerturber
    from memlens.viz.circuits import colored_tokens_view

    mem, non = _splits(ctx, max_paragraphs)
    groups = {"memorized": mem, "non_memorized": non}
    pert = PrefixPerturber(ctx.model)
    res = {}
    for name, group in groups.items():
        path = ctx.out / f"perturbation_{name}.jsonl"
        if path.exists():
            res[name] = PerturbationResult.load(path)
        else:
            res[name] = pert.sweep(group, strategy="random", n_samples=n_samples, seed=ctx.seed, progress=ctx.progress)
            res[name].save(path)
    edited_path = ctx.out / "perturbed_memorized.jsonl"
    if not edited_path.exists():
        pert.perturbed_paragraphs(mem, result=res["memorized"]).save(edited_path)
    drops = torch.stack([res["memorized"].paragraph_drops(i) for i in range(len(mem))])
    worst = int(drops.max(dim=1).values.argmax())
    P = mem.prefix_len
    views = [colored_tokens_view(
        ctx.model.to_str_tokens(mem.tokens[worst, :P]), drops[worst],
        title=f"Most fragile positions of memorized paragraph {mem.ids[worst]}",
        caption="Each prefix token shaded by the mean EM drop (tokens) when it alone is replaced: dark = fragile.",
        min_value=0.0, max_value=float(mem.continuation_len)),
        colored_tokens_view(
        [str(p) for p in range(P)], drops.mean(0),
        title="Fragility by prefix position, mean over memorized paragraphs",
        caption="Prefix positions 0..P-1 shaded by the mean EM drop: the paper finds a few positions matter most.",
        min_value=0.0, max_value=float(mem.continuation_len))]
    write_json_atomic(ctx.out / "perturb_views.json", [_view_dict(v) for v in views])
    worst_rows = res["memorized"].worst()
    return {"mean_em_drop_memorized": round(res["memorized"].mean_em_drop(), 2),
            "mean_em_drop_non_memorized": round(res["non_memorized"].mean_em_drop(), 2),
            "worst_memorized": worst_rows[["paragraph", "position", "token", "em"]].to_dict(orient="records")}


def heads_stage(ctx: "RunContext", max_paragraphs: int = 16) -> dict[str, Any]:
    """HeadLocalizer on the memorized paragraphs (perturbed versions from the perturbation stage
    when present) -> ``heads.json``; circuitsvis views of the top head -> ``head_views.json``."""
    from memlens.data import ParagraphSet
    from memlens.frequency import UnigramCounts
    from memlens.heads import HeadLocalizer, HeadReport, head_ablation_em_drop

    mem, non = _splits(ctx, max_paragraphs)
    path = ctx.out / "heads.json"
    views_path = ctx.out / "head_views.json"
    if not (path.exists() and views_path.exists()):
        unigram = UnigramCounts.default_for(ctx.model, ctx.paragraphs())
    if path.exists():
        report = HeadReport.load(path)
    else:
        perturbed_path = ctx.out / "perturbed_memorized.jsonl"
        perturbed = ParagraphSet.load(perturbed_path) if perturbed_path.exists() else None
        report = HeadLocalizer(ctx.model).localize(mem, non, perturbed=perturbed, unigram=unigram, progress=ctx.progress)
        report.columns["ablation_em_drop"] = head_ablation_em_drop(ctx.model, mem, progress=False)
        report.save(path)
    top = report.top(1).iloc[0]
    L, H = int(top["layer"]), int(top["head"])
    if not views_path.exists():
        views = []
        for i in range(min(2, len(mem))):
            views += report.attention_view(ctx.model, mem, L, H, paragraph=i, unigram=unigram)
        write_json_atomic(views_path, [_view_dict(v) for v in views])
    drop = report.columns.get("ablation_em_drop")
    out: dict[str, Any] = {"top": report.top(5)[["layer", "head", "combined_rank", *report.evidence]].round(4).to_dict(orient="records"),
                           "agreement_attribution_vs_exact": report.agreement, "notes": report.notes}
    if drop is not None:
        al, ah = divmod(int(drop.argmax()), report.n_heads)
        out["ablation_top_head"] = {"layer": al, "head": ah, "em_drop": round(float(drop.max()), 2), "ranks": report.where(al, ah)}
    if "rare_tau" in report.columns:
        tau = report.columns["rare_tau"]
        rl, rh = divmod(int(tau.argmin()), report.n_heads)
        out["rare_token_head"] = {"layer": rl, "head": rh, "kendall_tau": round(float(tau[rl, rh]), 3), "ranks": report.where(rl, rh)}
    return out


def unlearn_stage(ctx: "RunContext", n_targets: int = 4, steps: int = 10, lr: float = 1e-3,
                  edit_steps: int = 30, edit_lr: float = 1e-2) -> dict[str, Any]:
    """Sparse unlearning and editing of a few memorized targets (objective x {all, top-k,
    random} weights, the paper's Fig. 5; unlearning also through the retain-aware ``selective``
    mask) -> ``unlearn.csv``. Editing (to the continuation that follows the target's worst prefix
    perturbation) needs more movement than unlearning: it runs ``edit_steps`` at ``edit_lr``."""
    import pandas as pd

    from memlens.data import ParagraphSet
    from memlens.unlearn import compare_masks

    mem, non = _splits(ctx, 16)
    targets = mem[:n_targets]
    settings = {"unlearn": {"steps": steps, "lr": lr}}
    path = ctx.out / "unlearn.csv"
    if path.exists():
        table = pd.read_csv(path)
    else:
        tables = [compare_masks(ctx.model, targets, non, other_memorized=mem, objectives=("unlearn",),
                                masks=("all", "topk", "selective", "random"), steps=steps, lr=lr,
                                progress=ctx.progress)]
        perturbed_path = ctx.out / "perturbed_memorized.jsonl"
        if perturbed_path.exists():
            pset = ParagraphSet.load(perturbed_path)
            by_original = {str(o): i for i, o in enumerate(pset.metadata.get("original", []))}
            if all(t in by_original for t in targets.ids):
                tables.append(compare_masks(
                    ctx.model, targets, non, other_memorized=mem, objectives=("edit",),
                    perturbed=pset[[by_original[t] for t in targets.ids]], steps=edit_steps, lr=edit_lr,
                    progress=ctx.progress))
        table = pd.concat(tables, ignore_index=True)
        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False)
    if (table["objective"] == "edit").any():
        settings["edit"] = {"steps": edit_steps, "lr": edit_lr}
    rows = table.round(3).astype(object).where(table.notna(), None).to_dict(orient="records")  # NaN -> null: strict JSON
    return {"targets": list(targets.ids), "settings": settings, "table": rows}


def _view_dict(view) -> dict[str, Any]:
    return {"component": view.component, "props": view.props, "title": view.title, "caption": view.caption}
