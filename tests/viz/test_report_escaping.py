"""Paragraph ids are text, never markup: a report built with every stage on ids that carry HTML
and script breakers shows them escaped in every section (#33)."""

from __future__ import annotations

import json
import re

from memlens import RunConfig, run_pipeline

EVIL = "</script><img src=x onerror=alert({i})>"


def test_every_section_escapes_hostile_paragraph_ids(organism, organism_cache, tmp_path):
    paras = organism.ground_truth.paragraph_set()
    path = tmp_path / "evil.jsonl"
    path.write_text("".join(json.dumps({"id": EVIL.format(i=i), "tokens": paras.tokens[i].tolist()}) + "\n"
                            for i in range(len(paras))))
    cfg = RunConfig(model="organism-tiny", paragraphs=str(path)).override({
        "gradients.max_paragraphs": 4, "gradients.max_per_em_bin": 4, "perturb.max_paragraphs": 3,
        "perturb.n_samples": 1, "heads.max_paragraphs": 3, "heads.view_paragraphs": 2, "unlearn.n_targets": 1,
        "unlearn.retain_paragraphs": 4, "unlearn.masks": ["topk", "random"], "unlearn.edit_masks": ["topk"],
        "unlearn.edit_steps": 2, "unlearn.steps": 2, "tradeoff.lrs": [1e-3], "tradeoff.masks": ["random"],
        "noise.scales": [0.0, 1.0], "noise.masks": ["random"], "noise.draws": 1, "rare_attention.enabled": True,
        "rare_attention.paragraphs": 40, "pair_gradients.max_paragraphs": 2})
    out = tmp_path / "run"
    run_pipeline(cfg, out, cache_dir=organism_cache, progress=False)
    html = (out / "report.html").read_text()
    skipped = [s for s in ("scan", "gradients", "perturb", "heads", "head_ablation", "rare_attention", "pair_gradients",
                           "unlearn", "tradeoff", "noise") if "skipped" in json.loads((out / f"{s}.summary.json").read_text())]
    assert not skipped, skipped  # every stage drew its section from these ids
    # the raw markup never appears: no id opens a tag or closes a script early
    assert "<img src=x" not in html and "</script><img" not in html
    # the ids are there, as text: escaped in HTML, or \u003c-escaped inside script JSON
    shown = re.findall(r"(&lt;|\\u003c)img src=x onerror=alert\((\d+)\)", html)
    assert {kind for kind, _ in shown} >= {"&lt;"} and len(shown) >= 3, shown[:5]
