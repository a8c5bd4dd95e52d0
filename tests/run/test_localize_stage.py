"""The localization stage: off in a plain run, on with its setting or its own command, with a
report section."""

from __future__ import annotations

import json

from memlens import RunConfig, run_pipeline
from memlens.run.cli import main


def test_the_stage_is_off_by_default_and_runs_when_asked(organism, organism_cache, tmp_path):
    out = tmp_path / "run"
    cfg = RunConfig(model="organism-tiny").override({
        "localize.localizers": ["activation", "random"], "localize.ratios": [0.05], "localize.seeds": [0, 1],
        "localize.n_paragraphs": 1})
    run_pipeline(cfg, out, stages=["scan", "localize", "report"], cache_dir=organism_cache, progress=False)
    assert "skipped" in json.loads((out / "localize.summary.json").read_text())
    assert main(["localize", "--out", str(out), "--cache-dir", organism_cache, "--quiet"]) == 0
    summary = json.loads((out / "localize.summary.json").read_text())
    rows = {r["localizer"]: r for r in summary["neuron"]}
    assert rows["activation"]["n_seeds"] == 2 and rows["activation"]["recall"] > rows["random"]["recall"]
    assert (out / "localization.safetensors").exists() and not (out / "localization.blocks.partial").exists()
    assert main(["report", "--out", str(out), "--quiet"]) == 0
    html = (out / "report.html").read_text()
    assert "Localization against planted truth" in html and "INJ: recall of the planted neurons" in html
