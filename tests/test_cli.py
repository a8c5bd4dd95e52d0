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


def test_organism_info(organism, organism_cache, capsys):
    assert main(["organism", "info", "--size", "tiny", "--cache-dir", organism_cache]) == 0
    assert json.loads(capsys.readouterr().out)["size"] == "tiny"


def test_help_explains_every_stage(capsys):
    for stage in ("run", "scan", "gradients", "perturb", "heads", "unlearn", "report"):
        with pytest.raises(SystemExit):
            main([stage, "--help"])
        text = capsys.readouterr().out
        assert "--out" in text and ("--model" in text or stage == "report")


def test_stage_subcommand_reruns_one_stage(tiny_run, organism_cache, capsys, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    stamps = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    assert main(["report", "--out", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["bytes"] > 1_000_000
    assert (run / "report.html").stat().st_mtime_ns > stamps["report.html"]
    assert (run / "heads.json").stat().st_mtime_ns == stamps["heads.json"]
    assert main(["perturb", "--model", "organism-tiny", "--cache-dir", organism_cache, "--out", str(run), "--quiet"]) == 0
    assert "mean_em_drop_memorized" in json.loads(capsys.readouterr().out)
    assert main(["heads", "--model", "organism-tiny", "--seed", "3", "--cache-dir", organism_cache, "--out", str(run)]) == 2
    assert "holds another run (seed=0)" in capsys.readouterr().err


def test_report_needs_a_run_folder(tmp_path, capsys):
    assert main(["report", "--out", str(tmp_path / "nothing")]) == 2
    assert "no memlens run" in capsys.readouterr().err
