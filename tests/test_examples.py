"""The examples run as written, on the tiny organism."""

import runpy
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path, organism, organism_cache, monkeypatch, capsys, tmp_path, request):
    if path.name == "scan_released_paragraphs.py":  # the paper's release, from the team's shared/ folder
        data = request.getfixturevalue("shared_data")
        monkeypatch.setenv("MEMLENS_RELEASED_CSV", str(data / "stoehr2024_gpt-neo-125M_memorized.csv"))
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    monkeypatch.setenv("MEMLENS_SIZE", "tiny")
    monkeypatch.setenv("MEMLENS_CACHE", organism_cache)
    runpy.run_path(str(path), run_name="__main__")
    assert "memorized" in capsys.readouterr().out
