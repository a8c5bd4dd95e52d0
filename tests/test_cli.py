import json

import pytest
import torch

from memlens.cli import main
from memlens.testing import random_hf_model, tiny_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    random_hf_model("gpt_neo", seed=2).save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


def test_scan_command(model_dir, tmp_path, capsys):
    f = tmp_path / "p.jsonl"
    g = torch.Generator().manual_seed(0)
    f.write_text("".join(json.dumps({"id": f"x{i}", "tokens": torch.randint(1, 500, (100,), generator=g).tolist()}) + "\n" for i in range(5)))
    out = tmp_path / "res.jsonl"
    assert main(["scan", str(f), "--model", str(model_dir), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 5
    rows = out.read_text().strip().split("\n")
    assert len(rows) == 6 and json.loads(rows[1])["id"] == "x0"
    assert json.loads(out.with_suffix(".summary.json").read_text())["n"] == 5


def test_scan_command_bad_input(model_dir, tmp_path, capsys):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"id": "a", "tokens": [1, 2, 3]}\n')
    assert main(["scan", str(f), "--model", str(model_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("memlens: error:") and "bad.jsonl:1" in err and "Traceback" not in err
    assert not (tmp_path / "bad.scan.jsonl").exists()


def test_unknown_model_name(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"id": "a", "tokens": list(range(100))}) + "\n")
    assert main(["scan", str(f), "--model", "no-such-org/no-such-model"]) == 2
    assert "not in the local HuggingFace cache" in capsys.readouterr().err


def test_run_and_organism_info(organism, organism_cache, tmp_path, capsys):
    assert main(["organism", "info", "--size", "tiny", "--cache-dir", organism_cache]) == 0
    assert json.loads(capsys.readouterr().out)["size"] == "tiny"
    out = tmp_path / "run"
    assert main(["run", "--model", "organism-tiny", "--cache-dir", organism_cache, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    gt = summary["ground_truth"]
    assert set(gt) >= {"planted_by_copies", "spearman_em_vs_copies", "background", "held_out"}
    assert (out / "scan.jsonl").exists()
    g = summary["gradients"]["memorized_vs_non_memorized"]
    assert g["total_a"] < g["total_b"]  # memorized paragraphs: smaller gradients
    p = summary["perturbation"]
    assert p["mean_em_drop_memorized"] < p["mean_em_drop_non_memorized"]
    for name in ("gradients_memorized.pt", "perturbation_memorized.jsonl", "perturbed_memorized.jsonl"):
        assert (out / name).exists()
    # a second run resumes: every stage's output is loaded, the summary is the same
    stamp = (out / "perturbation_memorized.jsonl").stat().st_mtime_ns
    assert main(["run", "--model", "organism-tiny", "--cache-dir", organism_cache, "--out", str(out)]) == 0
    assert (out / "perturbation_memorized.jsonl").stat().st_mtime_ns == stamp
    again = json.loads((out / "summary.json").read_text())
    assert again["perturbation"] == p and again["ground_truth"] == gt
