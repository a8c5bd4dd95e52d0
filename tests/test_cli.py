import json

import pytest
import torch

from memlens.run.cli import main
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
    out = tmp_path / "res.safetensors"
    assert main(["scan", str(f), "--model", str(model_dir), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)  # stdout holds the summary and nothing else
    assert summary["n"] == 5
    from memlens import ScanResult

    back = ScanResult.load(out)
    assert back.paragraphs.ids == [f"x{i}" for i in range(5)] and back.provenance.model == str(model_dir)
    assert json.loads((tmp_path / "res.summary.json").read_text())["n"] == 5
    assert main(["show", str(out)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["kind"] == "ScanResult" and shown["summary"]["n"] == 5


def test_scan_command_bad_input(model_dir, tmp_path, capsys):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"id": "a", "tokens": [1, 2, 3]}\n')
    assert main(["scan", str(f), "--model", str(model_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("memlens: error:") and "bad.jsonl:1" in err and "Traceback" not in err
    assert not list(tmp_path.glob("bad.scan*"))


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
    assert (run / "heads.safetensors").stat().st_mtime_ns == stamps["heads.safetensors"]
    # a folder made by `memlens run` keeps its model and settings: no --model needed
    assert main(["perturb", "--cache-dir", organism_cache, "--out", str(run), "--quiet"]) == 0
    assert "mean_em_drop_memorized" in json.loads(capsys.readouterr().out)
    assert main(["perturb", "--n-samples", "7", "--cache-dir", organism_cache, "--out", str(run), "--quiet"]) == 2
    assert "perturb.n_samples: 4 -> 7" in capsys.readouterr().err
    assert main(["heads", "--model", "organism-tiny", "--seed", "3", "--cache-dir", organism_cache, "--out", str(run)]) == 2
    assert "holds another run (seed=0)" in capsys.readouterr().err


def test_report_needs_a_run_folder(tmp_path, capsys):
    assert main(["report", "--out", str(tmp_path / "nothing")]) == 2
    assert "no memlens run" in capsys.readouterr().err


def test_config_round_trip(tmp_path, capsys):
    assert main(["config", "--steps", "20", "--max-paragraphs", "8"]) == 0
    text = capsys.readouterr().out
    path = tmp_path / "study.toml"
    path.write_text(text)
    from memlens import RunConfig

    cfg = RunConfig.from_toml(path)
    assert cfg.unlearn.steps == 20 and cfg.heads.max_paragraphs == 8 and cfg.perturb.max_paragraphs == 8
    path.write_text(text.replace("steps = 20", "stpes = 20"))
    assert main(["run", "--config", str(path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "study.toml" in err and "stpes" in err and not (tmp_path / "r").exists()


def test_bad_setting_flag_is_one_line(tmp_path, capsys):
    assert main(["run", "--fraction", "0", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("memlens: error: setting unlearn.fraction = 0") and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("memlens: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture
def paragraph_file(tmp_path):
    f = tmp_path / "p.jsonl"
    g = torch.Generator().manual_seed(1)
    f.write_text("".join(json.dumps({"id": f"x{i}", "tokens": torch.randint(1, 500, (100,), generator=g).tolist()})
                         + "\n" for i in range(3)))
    return f


def test_bad_outputs_are_refused_before_the_model_loads(paragraph_file, tmp_path, capsys, monkeypatch):
    """Each of these used to lose the input or fail after the whole scan."""
    import memlens.loading

    monkeypatch.setattr(memlens.loading, "load_model", lambda *a, **k: pytest.fail("loaded the model"))
    before = paragraph_file.read_bytes()
    (tmp_path / "afile").write_text("")
    (tmp_path / "adir").mkdir()
    cases = {
        str(paragraph_file): "is the paragraph file itself",
        str(tmp_path / "adir"): "is a folder; give a file path",
        str(tmp_path / "afile" / "r.safetensors"): "afile is a file, not a folder",
    }
    for out, message in cases.items():
        assert main(["scan", str(paragraph_file), "--model", "organism-tiny", "--out", out]) == 2
        assert message in one_line_error(capsys)
    assert main(["scan", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "r.safetensors")]) == 2
    assert "missing.jsonl: no such paragraph file" in one_line_error(capsys)
    assert main(["run", "--paragraphs", str(paragraph_file), "--out", str(tmp_path / "afile" / "run")]) == 2
    assert "afile is a file, not a folder" in one_line_error(capsys)
    assert paragraph_file.read_bytes() == before and list((tmp_path / "adir").iterdir()) == []


@pytest.mark.parametrize("flag,value", [("--batch-size", "0"), ("--batch-size", "-1"), ("--steps", "0"),
                                        ("--lr", "nan"), ("--n-samples", "-3")])
def test_bad_settings_are_one_line(flag, value, tmp_path, capsys):
    assert main(["run", flag, value, "--out", str(tmp_path / "r")]) == 2
    assert one_line_error(capsys).startswith("memlens: error: setting ")
    assert not (tmp_path / "r").exists()


def test_file_system_errors_are_one_line(model_dir, paragraph_file, tmp_path, capsys, monkeypatch):
    import importlib

    scan_module = importlib.import_module("memlens.analyses.scan")  # the package's `scan` name is the function

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device", str(tmp_path / "r.safetensors"))

    monkeypatch.setattr(scan_module, "scan", disk_full)
    assert main(["scan", str(paragraph_file), "--model", str(model_dir), "--out", str(tmp_path / "r.safetensors")]) == 2
    assert "No space left on device" in one_line_error(capsys)


def test_deeply_nested_json_is_one_line(model_dir, tmp_path, capsys):
    f = tmp_path / "deep.jsonl"
    f.write_text('{"id": "a", "tokens": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    assert main(["scan", str(f), "--model", str(model_dir), "--quiet"]) == 2
    assert "deep.jsonl:1: JSON nested too deeply" in one_line_error(capsys)


def test_quiet_prints_no_progress_bar(model_dir, paragraph_file, tmp_path, capsys):
    assert main(["scan", str(paragraph_file), "--model", str(model_dir), "--out", str(tmp_path / "r.safetensors"),
                 "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"results: {tmp_path / 'r.safetensors'}"]
