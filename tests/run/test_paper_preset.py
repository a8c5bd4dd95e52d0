"""`RunConfig.paper()` / `memlens run --preset paper`: the paper's settings, one setting away,
recorded in run.json."""

import json

import pytest

from memlens import InputError, RunConfig
from memlens.run.cli import main
from memlens.run.presets import PAPER_SETTINGS


def test_the_paper_preset_sets_every_paper_value():
    cfg = RunConfig.paper()
    flat = cfg.to_dict()
    for key, value in PAPER_SETTINGS.items():
        got = flat
        for part in key.split("."):
            got = got[part]
        assert got == value, f"{key}: {got!r} != the paper's {value!r}"
    assert cfg.preset == "paper" and RunConfig().preset == ""
    u = cfg.unlearn
    assert (u.lr, u.weight_decay, u.steps, u.nll_scale, u.kl_direction, u.kl_reduction) == \
        (1e-5, 1.0, 5, 0.1, "original||model", "batchmean")
    assert (u.n_targets, u.retain_paragraphs, u.retain_design) == (20, 10, "fresh")
    p = cfg.perturb
    assert (p.skip_position_0, p.allow_original, p.worst_ties, p.n_samples) == (True, True, "earliest", 1)
    # every paper value differs from memlens's default somewhere, and the TOML round trip keeps them
    assert RunConfig().differences(cfg)
    with pytest.raises(InputError, match="unknown preset"):
        RunConfig.from_preset("nope")


def test_the_cli_prints_and_records_the_preset(tmp_path, capsys):
    assert main(["config", "--preset", "paper", "--lr", "0.001"]) == 0
    toml = capsys.readouterr().out
    assert 'preset = "paper"' in toml and "lr = 0.001" in toml and 'kl_direction = "original||model"' in toml
    path = tmp_path / "paper.toml"
    path.write_text(toml)
    cfg = RunConfig.from_toml(path)
    assert cfg.unlearn.lr == 0.001 and cfg.unlearn.weight_decay == 1.0 and cfg.preset == "paper"
    assert main(["config", "--preset", "paper", "--config", str(path)]) == 2
    assert "use one" in capsys.readouterr().err


def test_a_paper_run_on_the_tiny_organism(organism, organism_cache, tmp_path):
    """A run with the paper preset's settings end to end (fewer trials and learning rates): processed weights,
    the code's objective and trial design in run.json; every trial kept, with a fresh retain batch
    each; the trade-off curves and the Fig. 7 setup in the report."""
    from memlens.analyses.mask_comparison import MaskComparison
    from memlens.analyses.mask_tradeoff import MaskTradeoff

    out = tmp_path / "paper"
    settings = tmp_path / "paper.toml"  # the preset, made cheaper: 3 trials, 2 learning rates, no editing
    settings.write_text(RunConfig.paper("organism-tiny").override(
        {"unlearn.n_targets": 3, "tradeoff.lrs": [1e-5, 1e-2], "tradeoff.seeds": [0], "tradeoff.decays": ["none", "coupled:1"],
         "unlearn.edit": False}).to_toml())
    code = main(["run", "--config", str(settings), "--cache-dir", organism_cache, "--out", str(out), "--quiet",
                 "--max-paragraphs", "8"])
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    cfg = run["config"]
    assert cfg["preset"] == "paper" and cfg["weights"] == "processed"
    assert (cfg["unlearn"]["kl_direction"], cfg["unlearn"]["weight_decay"], cfg["unlearn"]["retain_design"]) == \
        ("original||model", 1.0, "fresh")
    table = MaskComparison.load(out / "unlearn.safetensors")
    unlearn = [t for t in table.trials if t["objective"] == "unlearn"]
    assert len(unlearn) == 3 * 3 and {len(t["retain"]) for t in unlearn} == {10}
    assert len({tuple(t["retain"]) for t in unlearn}) == 3  # a fresh batch per trial
    curves = MaskTradeoff.load(out / "unlearn_tradeoff.safetensors")
    assert sorted({r["lr"] for r in curves.rows}) == [1e-5, 1e-2] and {r["decay"] for r in curves.rows} == {"none", "coupled:1"}
    assert {r["steps"] for r in curves.rows} == {5}  # the preset's steps when the grid gives none
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rare_attention"]["n_paragraphs"] > 8
    html = (out / "report.html").read_text()
    assert "Forgetting against sparing" in html and "trials per mask" in html and "Fig. 7 setup" in html
    assert "retain EM at target EM 25" in html
