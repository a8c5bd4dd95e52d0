"""``memlens run`` on the tiny organism: every stage's files, the summary, resuming, and the
run-folder guard."""

from __future__ import annotations

import json
import shutil

import pytest

from memlens import InputError, RunConfig
from memlens.run.pipeline import run_pipeline
from memlens.run.stage import stage_names

FILES = ["run.json", "scan.safetensors", "gradients_memorized.safetensors", "gradients_non_memorized.safetensors",
         "gradient_profiles_by_em.safetensors", "perturbation_memorized.safetensors", "perturbed_memorized.jsonl",
         "perturb_views.json", "heads.safetensors", "head_views.json", "unlearn.safetensors", "report.html",
         "summary.json", "gradient_similarity.safetensors", "noise.safetensors", "pair_gradients.safetensors",
         "head_ablation.safetensors"]


def test_every_stage_writes_its_files(tiny_run):
    for name in FILES + [f"{s}.summary.json" for s in stage_names()]:
        assert (tiny_run / name).exists(), name
    assert not list(tiny_run.glob("*.tmp*")) and not list(tiny_run.glob("*.partial"))


def test_summary_reproduces_the_findings(tiny_run):
    s = json.loads((tiny_run / "summary.json").read_text())
    assert set(s["seconds"]) >= set(stage_names())
    assert s["run"]["model"] == "organism-tiny" and s["run"]["versions"]["torch"].startswith("2.")
    g = s["gradients"]["memorized_vs_non_memorized"]
    assert g["labels"] == ["memorized", "non_memorized"]
    assert g["total"]["memorized"] < g["total"]["non_memorized"]  # memorized paragraphs: smaller gradients
    p = s["perturb"]
    assert p["mean_em_drop_memorized"] < p["mean_em_drop_non_memorized"]
    assert s["head_ablation"]["top_head_ranks"]["combined"] <= 3
    rows = {(r["objective"], r["mask"]): r for r in s["unlearn"]["table"]}
    assert rows[("unlearn", "topk")]["target_em_after"] < rows[("unlearn", "random")]["target_em_after"]
    edit_top, edit_random = rows[("edit", "topk")], rows[("edit", "random")]
    assert 0 <= edit_top["target_edit_success"] <= 1
    # editing through the top-k weights reaches the new continuation at least as far as a random mask
    assert edit_top["target_em_new_after"] >= edit_random["target_em_new_after"]
    # every trial is kept, one per target and mask, with bootstrap intervals around the means
    assert rows[("unlearn", "topk")]["n_trials"] == len(s["unlearn"]["targets"])
    assert rows[("unlearn", "topk")]["target_em_after_ci_low"] <= rows[("unlearn", "topk")]["target_em_after"]
    sel = rows[("unlearn", "selective")]
    assert sel["mask_size"] == rows[("unlearn", "topk")]["mask_size"]
    assert sel["retain_top1_changed"] <= rows[("unlearn", "topk")]["retain_top1_changed"]
    # noise on the top-k weights erases the memorized targets more than the same noise on random weights
    noise = s["noise"]["masks"]
    assert noise["topk"]["memorized_em_at_min"] == noise["random"]["memorized_em_at_min"] == 50
    assert noise["topk"]["memorized_em_at_max"] + 10 < noise["random"]["memorized_em_at_max"]
    # memorized paragraphs' gradients point elsewhere than non-memorized ones': cosines well below 1
    assert s["gradients"]["similarity"]["mean"] < 0.9
    assert {"W_in_sum", "attn_0", "mlp_0", "score_var"} <= set(s["gradients"]["by_em_range"][0])


def test_report_is_self_contained(tiny_run):
    html = (tiny_run / "report.html").read_text()
    assert html.count('data-memlens="plotly"') == 1 and html.count('data-memlens="circuitsvis"') == 1
    assert "https://" not in html.split("</head>", 1)[1].replace("https://plotly.com", "")
    for title in ("What was run", "Scan", "Gradient maps", "Heads", "Prefix perturbation", "Sparse unlearning",
                  "Memorization against duplication", "Cosine similarity", "Noise intervention",
                  "attention from the first continuation token", "Fig. 9 as the official code draws it",
                  "Fig. 10 over"):
        assert title in html, title
    assert html.count('class="guide"') >= html.count('class="figure plotly-figure"')


def test_rerun_resumes_without_recomputing(tiny_run, organism_cache, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "heads.summary.json").unlink()  # as if interrupted during the head stage
    (run / "heads.safetensors").unlink()
    stamps = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    run_pipeline("organism-tiny", run, cache_dir=organism_cache, progress=False)
    assert (run / "heads.safetensors").exists()
    for name in ("scan.safetensors", "gradients_memorized.safetensors", "perturbation_memorized.safetensors",
                 "unlearn.safetensors"):
        assert (run / name).stat().st_mtime_ns == stamps[name], name


def test_folder_guard(tiny_run, organism_cache, tmp_path):
    with pytest.raises(InputError, match="holds another run"):
        run_pipeline("organism", tiny_run, cache_dir=organism_cache, progress=False)
    other = tmp_path / "busy"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty and holds no memlens run"):
        run_pipeline("organism-tiny", other, cache_dir=organism_cache, progress=False)
    assert (other / "notes.txt").read_text() == "mine"
    with pytest.raises(InputError, match="no such paragraph file"):
        run_pipeline(RunConfig(model="organism-tiny", paragraphs=str(tmp_path / "missing.jsonl")), tmp_path / "x",
                     progress=False)
    with pytest.raises(InputError, match="unknown stage"):
        run_pipeline("organism-tiny", tmp_path / "y", stages=["scna"], progress=False)


def test_unreadable_paragraph_file(organism_cache, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "hello"}\nnot json\n')
    with pytest.raises(InputError, match="bad.jsonl"):
        run_pipeline(RunConfig(model="organism-tiny", paragraphs=str(bad)), tmp_path / "run", cache_dir=organism_cache,
                     progress=False)
    assert not (tmp_path / "run").exists()  # a run that cannot read its paragraphs claims no folder


def test_resume_with_other_settings_is_refused(tiny_run, organism_cache):
    before = sorted(p.name for p in tiny_run.iterdir())
    changed = RunConfig(model="organism-tiny").override({"unlearn.steps": 99})
    with pytest.raises(InputError, match=r"other settings \(unlearn.steps: 10 -> 99\)"):
        run_pipeline(changed, tiny_run, cache_dir=organism_cache, progress=False)
    faster = RunConfig(model="organism-tiny").override({"scan.batch_size": 3})  # runtime only: allowed
    run_pipeline(faster, tiny_run, cache_dir=organism_cache, progress=False)
    assert sorted(p.name for p in tiny_run.iterdir()) == before


def test_run_json_records_the_settings(tiny_run):
    run = json.loads((tiny_run / "run.json").read_text())
    assert RunConfig.from_dict(run["config"]) == RunConfig(model="organism-tiny")
