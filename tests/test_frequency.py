from __future__ import annotations

import json

import pytest
import torch

from memlens import InputError, ParagraphSet
from memlens.analyses.frequency import UnigramCounts


def test_from_paragraphs_counts_every_token():
    paras = ParagraphSet.from_tokens(torch.tensor([[1, 1, 2, 3], [3, 3, 3, 0]]), prefix_len=2)
    u = UnigramCounts.from_paragraphs(paras, vocab_size=6)
    assert u.counts.tolist() == [1, 2, 1, 4, 0, 0]
    assert u.total == 8
    assert u.of(torch.tensor([[3, 4]])).tolist() == [[4, 0]]
    assert torch.isfinite(u.log_frequency(torch.tensor([4]))).all()


def test_rarity_rank_puts_rarest_first():
    u = UnigramCounts(torch.tensor([10, 1, 5, 0]))
    assert u.rarity_rank(torch.tensor([0, 1, 2, 3])).tolist() == [3, 1, 2, 0]


def test_from_organism(organism):
    u = UnigramCounts.from_organism(organism.ground_truth)
    assert u.vocab_size == organism.vocab_size and u.total > 0


@pytest.mark.parametrize("fmt", ["pt", "json_list", "json_dict", "csv", "tsv"])
def test_from_file_formats(tmp_path, fmt):
    counts = [3, 0, 7, 1]
    if fmt == "pt":
        path = tmp_path / "c.pt"
        torch.save(torch.tensor(counts), path)
    elif fmt == "json_list":
        path = tmp_path / "c.json"
        path.write_text(json.dumps(counts))
    elif fmt == "json_dict":
        path = tmp_path / "c.json"
        path.write_text(json.dumps({str(i): c for i, c in enumerate(counts) if c}))
    else:
        sep = "\t" if fmt == "tsv" else ","
        path = tmp_path / f"c.{fmt}"
        path.write_text(f"token_id{sep}count\n" + "".join(f"{i}{sep}{c}\n" for i, c in enumerate(counts) if c))
    u = UnigramCounts.from_file(path, vocab_size=4)
    assert u.counts.tolist() == counts


def test_from_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "c.csv"
    bad.write_text("token_id,count\n0,4\nseven,3\n")
    with pytest.raises(InputError, match=r"c.csv, line 3"):
        UnigramCounts.from_file(bad)
    with pytest.raises(InputError, match="no such"):
        UnigramCounts.from_file(tmp_path / "missing.csv")
    with pytest.raises(InputError, match="unknown unigram-count format"):
        UnigramCounts.from_file(bad.rename(tmp_path / "c.txt"))
    with pytest.raises(InputError, match=">= 0"):
        UnigramCounts(torch.tensor([1, -1]))
    with pytest.raises(InputError, match="outside the counts' vocabulary"):
        UnigramCounts(torch.tensor([1, 2])).of(torch.tensor([5]))
