"""The examples run as written, on the tiny organism."""

import re
import runpy
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))

#: per example: a line it must print (a regex) and a check of the numbers in it (ground truth of the
#: tiny organism where one applies)
EXPECTED = {
    "full_study.py": (r"memorized / partly / non-memorized: \[(\d+), (\d+), (\d+)\]",
                      lambda m, n, p: int(m) > 0 and int(n) > 0),
    "gradient_map.py": (r"top-0\.1% mask: (\d+) weights", lambda n: int(n) > 0),
    "head_localization.py": (r"zero-ablating L\d+H\d+ costs ([\d.]+) EM tokens", lambda d: float(d) >= 0),
    "hooks_and_components.py": (r"(\d+) memorized planted paragraphs", lambda n: int(n) > 0),
    "prefix_perturbation.py": (r"memorized ([\d.]+) vs non-memorized ([\d.]+)", lambda a, b: float(a) < float(b)),
    "scan_at_scale.py": (r"memorized paragraphs: \[('[^']+'.*)\]", lambda ids: len(ids) > 0),
    "scan_organism.py": (r"memorized paragraphs: \[('[^']+'.*)\]", lambda ids: len(ids) > 0),
    "scan_released_paragraphs.py": (r"(\d+) of (\d+) released paragraphs scanned", lambda a, b: 0 < int(a) <= int(b)),
    "resurfacing_audit.py": (r"all weights unlearned the group from EM ([\d.]+) to ([\d.]+)",
                             lambda before, after: float(after) < float(before)),
    "sparse_unlearning.py": (r"changed (\d+) of a (\d+)-weight mask", lambda a, b: 0 < int(a) <= int(b)),
}


def test_every_example_has_an_expectation():
    assert {p.name for p in EXAMPLES} == set(EXPECTED)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path, organism, organism_cache, monkeypatch, capsys, tmp_path, request):
    if path.name == "scan_released_paragraphs.py":  # the paper's release, from the team's shared/ folder
        data = request.getfixturevalue("shared_data")
        monkeypatch.setenv("MEMLENS_RELEASED_CSV", str(data / "stoehr2024_gpt-neo-125M_memorized.csv"))
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    monkeypatch.setenv("MEMLENS_SIZE", "tiny")
    monkeypatch.setenv("MEMLENS_CACHE", organism_cache)
    runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    pattern, check = EXPECTED[path.name]
    match = re.search(pattern, out)
    assert match, f"{path.name} did not print a line matching {pattern!r}:\n{out[-2000:]}"
    assert check(*match.groups()), f"{path.name}: {match.group(0)!r} fails its check"
