"""The offline HTML report of a run folder: one section per row of the Stage table that has one,
each built from the files its stage wrote.

plotly.js and the circuitsvis bundle are inlined once each; nothing is fetched from any host.
Every figure carries a one-line reading guide.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Sequence

from memlens.core.errors import InputError
from memlens.core.io import read_json, write_text_atomic
from memlens.run.folder import RunFolder
from memlens.run.stage import Stage, stages as stage_table
from memlens.viz.circuits import CircuitsView
from memlens.viz.html import ReportBuilder, table


def _missing(stage: str, folder: RunFolder, summary: dict[str, Any] | None) -> str | None:
    if summary is None:
        return (f'<p class="missing">Stage <code>{stage}</code> has no results in this folder; run '
                f"<code>memlens {stage} --out {html.escape(str(folder.path))}</code>.</p>")
    if "skipped" in summary:
        return f'<p class="missing">Stage <code>{stage}</code> was skipped: {html.escape(summary["skipped"])}.</p>'
    return None


def _views(folder: RunFolder, key: str, stage: str) -> list[str]:
    data = folder.read_json_file(key, stage) or []
    return [CircuitsView(v["component"], v["props"], v.get("title", ""), v.get("caption", "")).fragment() for v in data]


def write_report(folder: str | Path | RunFolder, stages: Sequence[Stage] | None = None) -> Path:
    """Build ``report.html`` in the run folder from its stage results; returns its path.

    Args:
        folder: the run folder.
        stages: the stages whose sections are drawn, in order (default: the Stage table).
    """
    rf = folder if isinstance(folder, RunFolder) else RunFolder(Path(folder))
    run = rf.read_manifest() or {}
    rb = ReportBuilder(f"memlens report: {run.get('model', rf.path.name)}")
    _what_was_run(rb, rb.section("run", "What was run"), rf, run)
    for stage in stage_table() if stages is None else stages:
        if stage.section is None:
            continue
        parts = rb.section(stage.name, stage.title or stage.name)
        summary = rf.read_stage_summary(stage.name)
        if (missing := _missing(stage.name, rf, summary)) is not None:
            parts.append(missing)
        else:
            stage.section(rb, parts, rf, summary)
    write_text_atomic(rf.report, rb.html())
    return rf.report


def _what_was_run(rb: ReportBuilder, parts: list[str], folder: RunFolder, run: dict[str, Any]) -> None:
    summary = (read_json(folder.summary, "delete it and run `memlens run` again") if folder.summary.exists() else None) or {}
    para = run.get("paragraphs")
    rows = [{"item": "model", "value": run.get("model")},
            {"item": "paragraphs", "value": para["path"] if para else "the organism's ground-truth set"},
            {"item": "seed", "value": run.get("seed")}, {"item": "started", "value": run.get("started")}]
    rows += [{"item": k, "value": v} for k, v in (run.get("versions") or {}).items()]
    rows += [{"item": f"seconds: {k}", "value": v} for k, v in (summary.get("seconds") or {}).items()]
    rows.append({"item": "torch threads", "value": summary.get("torch_threads")})
    parts.append(table(rows))
    org = (folder.read_stage_summary("scan") or {}).get("organism")
    if org:
        parts.append("<h3>Organism</h3>" + table([{"item": k, "value": json.dumps(v) if isinstance(v, (dict, list)) else v}
                                                  for k, v in org.items()]))


def scan_section(rb: ReportBuilder, parts: list[str], folder: RunFolder, s: dict[str, Any]) -> None:

    from memlens.analyses.scan import ScanResult

    sc = s["scan"]
    parts.append(table([{"split": k, **sc[k]} for k in ("memorized", "partly", "non_memorized")]))
    result = folder.load("scan", ScanResult, "scan")
    parts.append(rb.figure(result.plot(), "EM = tokens of the 50-token continuation reproduced exactly by greedy decoding; "
                                          "memorized paragraphs pile up at the right edge."))
    from memlens.analyses.duplication import COUNT_COLUMNS, duplication_profile

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


def gradients_section(rb: ReportBuilder, parts: list[str], folder: RunFolder, s: dict[str, Any]) -> None:
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


def heads_section(rb: ReportBuilder, parts: list[str], folder: RunFolder, s: dict[str, Any]) -> None:
    from memlens.analyses.heads import HeadReport

    report = folder.load("heads", HeadReport, "heads")
    df = report.to_dataframe().head(10)
    cols = ["layer", "head", "combined_rank", *report.evidence] + (["ablation_em_drop"] if "ablation_em_drop" in df else [])
    parts.append(table(df[cols].to_dict(orient="records"), cols))
    parts.append('<p class="guide">One row per head, most implicated first; each evidence column is larger = more '
                 "implicated; the combined rank weighs patching (causal) as much as the other kinds together.</p>")
    if "ablation_top_head" in s:
        a = s["ablation_top_head"]
        parts.append(f"<p>Causal check: zero-ablating L{a['layer']}H{a['head']} costs the memorized paragraphs "
                     f"{a['em_drop']} EM tokens, the most of any head; its ranks: {html.escape(json.dumps(a['ranks']))}.</p>")
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
    if "rare_attention_paper" in s and folder.file("rare_attention").exists():
        from memlens.analyses.rare_attention import RareAttentionResult

        r = s["rare_attention_paper"]
        taus = ", ".join(f"{k} {v:.2f}" for k, v in r["token_tau"].items())
        parts.append(f"<p>The paper's Fig. 7 setup ({r['n_paragraphs']} memorized + non-memorized paragraphs, counts "
                     f"over both, dense ranks, attention summed): L{r['layer']}H{r['head']} has the most negative "
                     f"rank tau, {r['kendall_tau']:.2f} (the paper: -0.97 for L1H2), attention entropy "
                     f"{r['entropy']:.2f} nats; token-level tau by count set: {html.escape(taus)}.</p>")
        rare = folder.load("rare_attention", RareAttentionResult, "heads")
        parts.append(rb.figure(rare.plot(r["layer"], r["head"]), "The paper's Fig. 7 curve: attention summed over "
                                                                  "paragraphs per dense rarity rank."))
    if "pair_gradients" in s and folder.file("pair_gradients").exists():
        from memlens.analyses.pair_gradients import PairGradientResult

        pg = folder.load("pair_gradients", PairGradientResult, "heads")
        parts.append(rb.figure(pg.plot("v"), f"The paper's Fig. 10 over {len(pg.pair_ids)} memorized paragraphs and their "
                                             "perturbed versions: |dNLL/dv| of each head at the perturbed prefix token "
                                             "and at the position predicting the first changed token, for each run's "
                                             "own token (each panel scaled to [0, 1])."))
    parts.extend(_views(folder, "head_views", "heads"))


def perturb_section(rb: ReportBuilder, parts: list[str], folder: RunFolder, s: dict[str, Any]) -> None:
    from memlens.analyses.perturb import PerturbationResult

    mem = folder.load("perturbation", PerturbationResult, "perturb", "memorized")
    non = folder.load("perturbation", PerturbationResult, "perturb", "non_memorized")
    parts.append(table([{"set": "memorized", "mean EM drop": s["mean_em_drop_memorized"]},
                        {"set": "non-memorized", "mean EM drop": s["mean_em_drop_non_memorized"]}]))
    parts.append(rb.figure(mem.plot(non, labels=("memorized", "non-memorized")),
                           "Mean EM lost when the token at one prefix position is replaced by a random token; "
                           "memorized paragraphs resist most positions."))
    parts.append(rb.figure(mem.plot_distribution(non), "Distribution of EM drops over all perturbations of each set."))
    parts.extend(_views(folder, "perturb_views", "perturb"))


def unlearn_section(rb: ReportBuilder, parts: list[str], folder: RunFolder, s: dict[str, Any]) -> None:
    from memlens.analyses.mask_comparison import MaskComparison, MaskTradeoff

    rows = s["table"]
    cols = [c for c in ("objective", "mask", "n_trials", "mask_size", "weights_changed", "target_em_before",
                        "target_em_after", "target_em_after_ci_low", "target_em_after_ci_high",
                        "other_memorized_em_after", "retain_em_before", "retain_em_after", "retain_em_after_ci_low",
                        "retain_em_after_ci_high", "retain_top1_changed", "target_em_new_after",
                        "target_edit_success") if c in rows[0]]
    parts.append(table(rows, cols))
    how = "; ".join(f'{k}: {v["steps"]} Adam steps at lr {v["lr"]}' for k, v in s["settings"].items())
    design = s.get("design")
    trials = (f"{design['trials']} trials per mask, each one target with {'a fresh batch of ' if design['retain'] == 'fresh' else 'the same '}"
              f"{design['retain_paragraphs']} retain paragraphs; objective {html.escape(design['objective'])}, "
              f"weight decay {design['weight_decay']:g} (masked weights only)") if design else "each target fine-tuned alone"
    parts.append(f'<p class="guide">Targets {html.escape(", ".join(dict.fromkeys(s["targets"])))}: {trials} ({how}), '
                 "through all weights, the top 0.1% by gradient, the top 0.1% by gradient relative to the retain "
                 "set's sensitivity (selective), or a random 0.1%; EM after is the mean over trials with a bootstrap "
                 "95% interval (retain and other memorized: against the original model's own continuations). Edit "
                 "success = share of targets with EM >= 40 on their new continuation. Top-1 changed = continuation "
                 "positions (of each paragraph's 50) whose teacher-forced top-1 token moved: unlike EM, one flip at a "
                 "near-tie does not count every later token.</p>")
    fig = folder.load("unlearn", MaskComparison, "unlearn").plot()
    parts.append(rb.figure(fig, "Every trial is a point: unlearning should push the target's EM down and leave the "
                                "retain batch's EM near 50 (the paper's Fig. 5 violins)."))
    if s.get("tradeoff") and folder.file("unlearn_tradeoff").exists():
        fig = folder.load("unlearn_tradeoff", MaskTradeoff, "unlearn").plot()
        parts.append(rb.figure(fig, "Masks at equal forgetting: one point per learning rate; at the same target EM "
                                    "(x), the mask whose curve lies higher spares the retain set better."))
    if s.get("noise") and folder.file("noise").exists():
        from memlens.analyses.noise import NoiseResult

        noise = folder.load("noise", NoiseResult, "unlearn")
        rows = [{"mask": m, "weights": v["weights"], **{k: v2 for k, v2 in v.items() if k != "weights"}}
                for m, v in s["noise"]["masks"].items()]
        parts.append(table(rows))
        parts.append(rb.figure(noise.plot(), "Noise intervention: Gaussian noise (std = scale x each parameter's std) "
                                             "on one mask's weights; a mask that holds the memorized paragraphs "
                                             "breaks them (red) at a noise that spares the non-memorized ones (blue). "
                                             "Error bars: min-max over noise draws."))

