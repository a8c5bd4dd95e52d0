"""``memlens run``: the main job, stage by stage, with every stage's result saved.

Stages now: load (building the organism on first use) -> scan -> splits and ground-truth checks
-> gradient maps (memorized vs non-memorized, profiles by EM range) -> prefix perturbation
(memorized vs non-memorized, perturbed paragraphs for editing). A stage whose output is
already in the folder is loaded, not recomputed, so an interrupted run resumes. Later analyses
(heads, unlearning, the HTML report) add stages here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from memlens.data import ParagraphSet
from memlens.io import atomic_path, write_json_atomic
from memlens.scan import ScanResult


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


def gradient_stage(model, result, out: Path, max_paragraphs: int = 32) -> dict[str, Any]:
    """NLL gradient maps of memorized and non-memorized paragraphs, their comparison and the
    profiles by EM range; maps saved as ``gradients_*.pt``, profiles as CSV."""
    from memlens.gradients import GradientMap, GradientMapResult, profiles_by_em_range

    mem, non = result.memorized()[:max_paragraphs], result.non_memorized()[:max_paragraphs]
    if len(mem) == 0 or len(non) == 0:
        return {"skipped": f"needs memorized and non-memorized paragraphs ({len(mem)} / {len(non)})"}
    maps = {}
    for name, group in (("memorized", mem), ("non_memorized", non)):
        path = out / f"gradients_{name}.pt"
        if path.exists():
            maps[name] = GradientMapResult.load(path)
        else:
            maps[name] = GradientMap(model).compute(group, keep_weight_grads=False, progress=False)
            maps[name].label = name
            maps[name].save(path)
    profiles = out / "gradient_profiles_by_em.csv"
    if profiles.exists():
        import pandas as pd

        df = pd.read_csv(profiles)
    else:
        df = profiles_by_em_range(model, result, progress=False)
        with atomic_path(profiles) as tmp:
            df.to_csv(tmp, index=False)
    return {"memorized_vs_non_memorized": maps["memorized"].compare(maps["non_memorized"]).summary(),
            "top_memorized": maps["memorized"].top(5).to_dict(orient="records"),
            "by_em_range": df.to_dict(orient="records")}


def perturbation_stage(model, result, out: Path, max_paragraphs: int = 8, n_samples: int = 4) -> dict[str, Any]:
    """Random single-token prefix perturbations of memorized and non-memorized paragraphs (every
    position, ``n_samples`` each); results saved as ``perturbation_*.jsonl``, and the perturbed
    memorized paragraphs (for editing) as ``perturbed_memorized.jsonl``."""
    from memlens.perturb import PerturbationResult, PrefixPerturber

    groups = {"memorized": result.memorized()[:max_paragraphs], "non_memorized": result.non_memorized()[:max_paragraphs]}
    if any(len(g) == 0 for g in groups.values()):
        return {"skipped": "needs memorized and non-memorized paragraphs"}
    pert = PrefixPerturber(model)
    res = {}
    for name, group in groups.items():
        path = out / f"perturbation_{name}.jsonl"
        if path.exists():
            res[name] = PerturbationResult.load(path)
        else:
            res[name] = pert.sweep(group, strategy="random", n_samples=n_samples, seed=0, progress=False)
            res[name].save(path)
    edited_path = out / "perturbed_memorized.jsonl"
    if not edited_path.exists():
        pert.perturbed_paragraphs(groups["memorized"], result=res["memorized"]).save(edited_path)
    worst = res["memorized"].worst()
    return {"mean_em_drop_memorized": round(res["memorized"].mean_em_drop(), 2),
            "mean_em_drop_non_memorized": round(res["non_memorized"].mean_em_drop(), 2),
            "worst_memorized": worst[["paragraph", "position", "token", "em"]].to_dict(orient="records")}


def run_pipeline(model_spec: str, out: Path, paragraphs: str | None = None, seed: int = 0,
                 cache_dir: str | None = None) -> dict[str, Any]:
    """Run every stage into ``out`` and return the summary (also written to ``summary.json``)."""
    from memlens.cli import _load_model
    from memlens.scan import scan

    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    model = _load_model(model_spec, seed, cache_dir)
    timings["load_model"] = round(time.perf_counter() - t, 1)
    info = model.organism_info
    if paragraphs is not None:
        paras = ParagraphSet.from_file(paragraphs, model)
    elif info is not None:
        paras = info.paragraph_set()
    else:
        raise SystemExit("memlens run: this model has no built-in paragraphs; pass --paragraphs FILE")
    t = time.perf_counter()
    if (out / "scan.jsonl").exists():
        result = ScanResult.load(out / "scan.jsonl")
    else:
        result = scan(model, paras, out=out / "scan.jsonl")
    timings["scan"] = round(time.perf_counter() - t, 1)
    summary: dict[str, Any] = {"model": model.name, "scan": result.summary()}
    if info is not None and paragraphs is None:
        summary["ground_truth"] = organism_ground_truth(result, info)
        summary["organism"] = info.summary()
    t = time.perf_counter()
    summary["gradients"] = gradient_stage(model, result, out)
    timings["gradients"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    summary["perturbation"] = perturbation_stage(model, result, out)
    timings["perturbation"] = round(time.perf_counter() - t, 1)
    summary["seconds"] = timings
    summary["torch_threads"] = torch.get_num_threads()
    write_json_atomic(out / "summary.json", summary)
    return summary
