"""Hostile input to ``memlens run`` and its run folder (issue #16): a user's paragraph file with
odd metadata and ids, files damaged or torn by a kill, a paragraph file moved away. Each ends in
a finished report or a one-line error, and loses nothing."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from memlens import RunConfig, scan
from memlens.run.cli import main
from memlens.run.pipeline import run_pipeline

EVIL_ID = "evil\u202e<b>x</b>\x07\x1b[31m"  # a right-to-left override, markup, a bell and an ANSI escape


@pytest.fixture(scope="module")
def hostile_run(organism, organism_cache, tmp_path_factory):
    """A whole run on a user's file: planted paragraphs with a ``copies`` column and no ``group``
    column, the first memorized one renamed to :data:`EVIL_ID`; the file is deleted afterwards."""
    truth = organism.ground_truth
    paras = truth.paragraph_set(n_background=24, n_held_out=0)
    memorized = scan(organism, paras, progress=False).memorized().ids[0]
    folder = tmp_path_factory.mktemp("hostile")
    source = folder / "mine.jsonl"
    with source.open("w") as f:
        for r in paras.to_records():
            f.write(json.dumps({"id": EVIL_ID if r["id"] == memorized else r["id"], "tokens": r["tokens"],
                                "copies": r.get("copies", 0)}) + "\n")
    cfg = RunConfig(model="organism-tiny", paragraphs=str(source)).override({
        "gradients.max_paragraphs": 4, "perturb.max_paragraphs": 4, "heads.max_paragraphs": 4,
        "unlearn.n_targets": 1, "unlearn.steps": 2, "unlearn.edit_steps": 2})
    run_pipeline(cfg, folder / "run", cache_dir=organism_cache, progress=False)
    source.unlink()
    return folder / "run"


def test_copies_without_a_group_column_gets_its_figure(hostile_run):
    body = (hostile_run / "report.html").read_text().split("<body>", 1)[1]
    assert "Memorization against duplication" in body and "EM vs copies" in body and "Spearman EM vs copies" in body


def test_report_rebuilds_from_the_folder_alone(hostile_run, capsys):
    """The paragraph file is gone: `memlens report` needs only the run folder."""
    before = (hostile_run / "report.html").stat().st_mtime_ns
    assert main(["report", "--out", str(hostile_run), "--quiet"]) == 0
    assert (hostile_run / "report.html").stat().st_mtime_ns > before


def test_control_and_bidi_characters_from_ids_are_shown_not_obeyed(hostile_run):
    body = (hostile_run / "report.html").read_text().split("<body>", 1)[1]
    assert "evil⟨U+202E⟩" in body and "⟨U+0007⟩⟨U+001B⟩[31m" in body
    assert not re.search("[\u202a-\u202e\u2066-\u2069\x00-\x08\x0b\x0c\x0e-\x1f]", body)
    assert not re.search(r"(?<!\\)\\u(202[a-eA-E]|000[0-8]|001[0-9a-fA-F])", body)  # nor as JSON escapes
    assert "<b>x</b>" not in body  # markup in an id stays text


def test_damaged_run_files_are_one_line_errors(hostile_run, tmp_path, organism_cache, capsys):
    run = tmp_path / "run"
    shutil.copytree(hostile_run, run)
    (run / "heads.summary.json").write_text('{"seconds": ')  # torn
    assert main(["report", "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("memlens: error: ") and "\n" not in err
    assert "heads.summary.json: not valid JSON" in err and "memlens heads --out" in err
    (run / "scan.safetensors").write_bytes((run / "scan.safetensors").read_bytes()[:500])  # truncated
    (run / "gradients.summary.json").unlink()
    (run / "scan.summary.json").write_text("[" * 100_000 + "]" * 100_000)  # nested too deep
    assert main(["report", "--out", str(run)]) == 2
    assert "scan.summary.json: JSON nested too deeply" in capsys.readouterr().err


def test_a_run_killed_while_claiming_its_folder_can_start_again(organism_cache, tmp_path):
    """SIGKILL during the atomic write of run.json leaves only a temporary file: the folder holds
    no run and nothing of the user's, so the next run takes it (and the temporary goes)."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".run.json.k1ll3d.tmp").write_text('{"model": "organ')
    run_pipeline("organism-tiny", folder, cache_dir=organism_cache, stages=["scan"], progress=False)
    assert (folder / "run.json").exists() and not list(folder.glob(".*.tmp"))
    assert json.loads((folder / "scan.summary.json").read_text())["scan"]["n"] > 0


def test_damaged_results_in_a_run_folder(hostile_run, tmp_path, organism_cache, capsys):
    """A damaged scan result (every later stage reads it) is a one-line error saying how to redo
    it; a damaged result of an interrupted later stage is computed again."""
    run = tmp_path / "run"
    shutil.copytree(hostile_run, run)
    scan_file = run / "scan.safetensors"
    intact = scan_file.read_bytes()
    scan_file.write_bytes(intact[:700])
    assert main(["perturb", "--out", str(run), "--cache-dir", organism_cache, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "scan.safetensors: not a memlens result file" in err
    assert f"memlens scan --out {run}" in err
    scan_file.write_bytes(intact)
    (run / "perturb.summary.json").unlink()  # the stage was interrupted after writing a damaged file
    damaged = run / "perturbation_memorized.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:100])
    # a stage command computes every file of its stage again (a resumed `memlens run` would reuse the intact
    # ones and compute the damaged one again with a warning: tests/test_faults_round2.py)
    assert main(["perturb", "--out", str(run), "--cache-dir", organism_cache, "--quiet"]) == 0
    from memlens import PerturbationResult

    assert len(PerturbationResult.load(damaged).paragraphs) > 0
