"""The Stage table is the one list of stages: a stage added through it alone shows up in the
pipeline, the command line, the settings (run.json, TOML) and the report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest

from memlens import InputError, RunConfig, register_model_source, run_pipeline
from memlens.core.io import write_json_atomic
from memlens.run.cli import build_parser, main
from memlens.run.settings import StageConfig
from memlens.run.stage import Stage, get_stage, register_stage, stage_names, unregister_stage
from memlens.testing import random_model


@dataclass(frozen=True, kw_only=True)
class ToyConfig(StageConfig):
    """Settings of the toy stage."""

    stage: ClassVar[str] = "toy"
    repeat: int = 3

    def validate(self) -> None:
        self._positive_int("repeat")


def toy_stage(ctx) -> dict:
    """Counts the memorized-looking paragraphs' tokens, ``repeat`` times -> toy.json."""
    cfg = ctx.config.stage_settings("toy")
    n = len(ctx.paragraphs())
    write_json_atomic(ctx.folder.file("toy"), {"paragraphs": n, "repeat": cfg.repeat})
    return {"paragraphs": n, "repeat": cfg.repeat}


def toy_report(rb, parts, folder, summary) -> None:
    parts.append(f"<p id='toy-line'>toy saw {summary['paragraphs']} paragraphs, {summary['repeat']} times</p>")


@pytest.fixture
def toy():
    stage = register_stage(Stage("toy", toy_stage, "a toy analysis -> toy.json", config=ToyConfig,
                                 files={"toy": "toy.json"}, title="Toy section", report=toy_report,
                                 needs=("scan",)), before="report")
    yield stage
    unregister_stage("toy")


@pytest.fixture
def paragraph_file(tmp_path):
    import torch

    gen = torch.Generator().manual_seed(0)
    path = tmp_path / "p.jsonl"
    rows = [{"id": f"p{i}", "tokens": torch.randint(0, 500, (100,), generator=gen).tolist()} for i in range(6)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    register_model_source("test-random-neo", lambda **_: random_model("gpt_neo"))
    return path


def test_a_stage_added_through_the_table_runs_everywhere(toy, paragraph_file, tmp_path, capsys):
    assert stage_names()[-2:] == ("toy", "report")
    cfg = RunConfig(model="test-random-neo", paragraphs=str(paragraph_file))
    assert cfg.to_dict()["toy"] == {"repeat": 3} and cfg.stage_settings("toy") == ToyConfig()
    out = tmp_path / "run"
    summary = run_pipeline(cfg, out, stages=["toy", "report"], progress=False)
    # the pipeline: its needs ran first, its files and summary are there
    assert (out / "scan.summary.json").exists() and (out / "toy.summary.json").exists()
    assert json.loads((out / "toy.json").read_text()) == {"paragraphs": 6, "repeat": 3}
    assert summary["toy"]["paragraphs"] == 6 and "toy" in summary["seconds"]
    # run.json records its settings, and a resume with other toy settings is refused
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["toy"] == {"repeat": 3}
    assert RunConfig.from_dict(run["config"]).stage_settings("toy").repeat == 3
    with pytest.raises(InputError, match=r"toy.repeat: 3 -> 5"):
        run_pipeline(cfg.override({"toy.repeat": 5}), out, stages=["toy"], progress=False)
    # the report has its section, drawn from its summary
    html = (out / "report.html").read_text()
    assert "Toy section" in html and "toy saw 6 paragraphs, 3 times" in html
    # the command line: a subcommand with the table's help, that runs the stage again
    assert "a toy analysis -> toy.json" in build_parser().format_help()
    (out / "toy.json").unlink()
    assert main(["toy", "--out", str(out), "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["paragraphs"] == 6 and (out / "toy.json").exists()


def test_an_added_stages_settings_come_from_toml(toy, tmp_path):
    path = tmp_path / "study.toml"
    path.write_text('model = "organism-tiny"\n\n[toy]\nrepeat = 7\n')
    cfg = RunConfig.from_toml(path)
    assert cfg.toy.repeat == 7 and "[toy]\nrepeat = 7" in cfg.to_toml()
    path.write_text("[toy]\nrepeat = 0\n")
    with pytest.raises(InputError, match=r"toy.repeat = 0: must be an integer >= 1"):
        RunConfig.from_toml(path)


def test_the_table_refuses_clashes(toy):
    with pytest.raises(InputError, match="exists already"):
        register_stage(Stage("toy", toy_stage, "again"))
    with pytest.raises(InputError, match="already names"):
        Stage("other", toy_stage, "x", files={"toy": "other.json"})
    with pytest.raises(InputError, match="unknown stage 'nope'"):
        get_stage("nope")


def test_without_the_toy_stage_the_settings_have_no_toy_section():
    from memlens.run.folder import FILES

    assert "toy" not in stage_names() and "toy" not in FILES
    assert "toy" not in RunConfig().to_dict()
    with pytest.raises(InputError, match="unknown setting"):
        RunConfig.from_dict({"toy": {"repeat": 3}})
    assert set(RunConfig().to_dict()) >= {"scan", "gradients", "perturb", "heads", "unlearn"}
