"""Streaming, sharded scans (issue #15): a table equal to the in-memory scan, shards that merge to
the whole, a killed scan that resumes with nothing lost or scored twice."""

from __future__ import annotations

import importlib
import json

import pandas as pd
import pytest
import torch

from memlens import InputError, ParagraphSet, scan
from memlens.run.cli import main
from memlens import ScanTable, Shard, merge_scan_tables, scan_to_table
from memlens.testing import Interrupted, random_tokens, write_paragraph_jsonl

metrics = importlib.import_module("memlens.analyses.scan")  # the scan kernel (score_batch) calls it from there


@pytest.fixture
def random_file(neo, tmp_path):
    ps = ParagraphSet.from_tokens(random_tokens(23, 40, neo.vocab_size, seed=5), prefix_len=20,
                                  ids=[f"r{i}" for i in range(23)])
    return ps, write_paragraph_jsonl(tmp_path / "p.jsonl", ps)


def test_shards_from_flags_and_from_the_environment():
    assert Shard.parse("1/4") == Shard(1, 4) and Shard(1, 4).owns(5) and not Shard(1, 4).owns(4)
    assert Shard.from_env({"RANK": "2", "WORLD_SIZE": "8"}) == Shard(2, 8)  # torchrun
    assert Shard.from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "3"}) == Shard(0, 3)
    assert Shard.from_env({}) is None
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(InputError, match="shard"):
            Shard.parse(bad)
    from pathlib import Path

    assert Shard(1, 4).output_path(Path("scan.parquet")).name == "scan.shard-1-of-4.parquet"
    assert Shard().output_path(Path("scan.parquet")).name == "scan.parquet"


def test_table_equals_the_in_memory_scan(neo, random_file, tmp_path):
    ps, path = random_file
    ref = scan(neo, ps, progress=False)
    for out in ("t.jsonl", "t.parquet"):
        table = scan_to_table(neo, path, tmp_path / out, prefix_len=20, continuation_len=20, chunk_size=5,
                              batch_size=3, progress=False)
        df = ScanTable.open(tmp_path / out).to_dataframe()
        assert df["id"].tolist() == ps.ids and df["index"].tolist() == list(range(23))
        assert df["em"].tolist() == ref.em.tolist() and df["split"].tolist() == ref.split_of()
        torch.testing.assert_close(torch.tensor(df["nll"].values), ref.nll.double())
        torch.testing.assert_close(torch.tensor(df["extraction_logprob"].values), ref.extraction_logprob)
        torch.testing.assert_close(torch.tensor(df["min_k_nll"].values), ref.min_k_nll.double())
        assert table.header["n"] == 23 and table.header["min_k"] == ref.min_k and not (tmp_path / f"{out}.parts").exists()


def test_parquet_input_reads_like_jsonl(neo, random_file, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ps, path = random_file
    pq.write_table(pa.Table.from_pylist([{"id": i, "tokens": t} for i, t in zip(ps.ids, ps.tokens.tolist())]),
                   tmp_path / "p.parquet")
    a = scan_to_table(neo, path, tmp_path / "a.jsonl", prefix_len=20, continuation_len=20, chunk_size=4,
                      progress=False).to_dataframe()
    b = scan_to_table(neo, tmp_path / "p.parquet", tmp_path / "b.jsonl", prefix_len=20, continuation_len=20,
                      chunk_size=4, progress=False).to_dataframe()
    pd.testing.assert_frame_equal(a, b)


def test_shards_merge_to_the_whole(neo, random_file, tmp_path):
    ps, path = random_file
    whole = scan_to_table(neo, path, tmp_path / "whole.parquet", prefix_len=20, continuation_len=20, chunk_size=4,
                          progress=False).to_dataframe()
    shards = [scan_to_table(neo, path, tmp_path / "s.parquet", prefix_len=20, continuation_len=20, chunk_size=4,
                            shard=Shard(k, 3), progress=False) for k in range(3)]
    assert [t.path.name for t in shards] == [f"s.shard-{k}-of-3.parquet" for k in range(3)]
    ids = [set(t.to_dataframe()["id"]) for t in shards]
    assert sum(len(i) for i in ids) == 23 and set.union(*ids) == set(ps.ids)  # disjoint and complete
    merged = merge_scan_tables([t.path for t in reversed(shards)], tmp_path / "merged.jsonl").to_dataframe()
    pd.testing.assert_frame_equal(merged.reset_index(drop=True), whole, check_dtype=False)
    with pytest.raises(InputError, match=r"missing \[1\]"):
        merge_scan_tables([shards[0].path, shards[2].path], tmp_path / "m2.parquet")
    other = scan_to_table(neo, path, tmp_path / "o.parquet", prefix_len=20, continuation_len=20, chunk_size=5,
                          shard=Shard(1, 3), progress=False)
    with pytest.raises(InputError, match="not a shard of the same scan .*chunk_size"):
        merge_scan_tables([shards[0].path, other.path, shards[2].path], tmp_path / "m3.parquet")
    assert not (tmp_path / "m2.parquet").exists() and not (tmp_path / "m3.parquet").exists()


def test_a_killed_scan_resumes_with_nothing_lost_or_duplicated(neo, random_file, tmp_path, monkeypatch):
    ps, path = random_file
    real = metrics.teacher_forced_scores
    monkeypatch.setattr(metrics, "teacher_forced_scores", Interrupted(real, fail_at=3))  # killed in chunk 2
    out = tmp_path / "t.parquet"
    with pytest.raises(KeyboardInterrupt):
        scan_to_table(neo, path, out, prefix_len=20, continuation_len=20, chunk_size=5, progress=False)
    assert not out.exists() and len(list((tmp_path / "t.parquet.parts").glob("part-*.jsonl"))) == 2
    counted = Interrupted(real)
    monkeypatch.setattr(metrics, "teacher_forced_scores", counted)
    df = scan_to_table(neo, path, out, prefix_len=20, continuation_len=20, chunk_size=5, progress=False).to_dataframe()
    assert counted.calls == [5, 5, 3]  # chunks 2, 3, 4 only: the two finished chunks are not scored again
    assert df["id"].tolist() == ps.ids and not df["id"].duplicated().any()
    assert df["em"].tolist() == scan(neo, ps, progress=False).em.tolist()


def test_a_resumed_scan_rescores_a_chunk_whose_content_changed(neo, random_file, tmp_path, monkeypatch):
    ps, path = random_file
    real = metrics.teacher_forced_scores
    monkeypatch.setattr(metrics, "teacher_forced_scores", Interrupted(real, fail_at=2))
    out = tmp_path / "t.jsonl"
    with pytest.raises(KeyboardInterrupt):  # chunk 0 (r0..r4) finished
        scan_to_table(neo, path, out, prefix_len=20, continuation_len=20, chunk_size=5, progress=False)
    monkeypatch.setattr(metrics, "teacher_forced_scores", real)
    edited = ps.tokens.clone()
    edited[0, 20:] = edited[1, 20:]  # r0's continuation replaced under the same id
    changed = ParagraphSet.from_tokens(edited, prefix_len=20, ids=ps.ids)
    write_paragraph_jsonl(path, changed)
    df = scan_to_table(neo, path, out, prefix_len=20, continuation_len=20, chunk_size=5, progress=False).to_dataframe()
    ref = scan(neo, changed, progress=False)
    assert df["em"].tolist() == ref.em.tolist()
    torch.testing.assert_close(torch.tensor(df["nll"].values), ref.nll.double())


def test_bad_streaming_input(neo, random_file, tmp_path):
    ps, path = random_file
    with pytest.raises(InputError, match="ends in .parquet or .jsonl"):
        scan_to_table(neo, path, tmp_path / "t.csv", prefix_len=20, continuation_len=20)
    with pytest.raises(InputError, match="is the paragraph file itself"):
        scan_to_table(neo, path, path, prefix_len=20, continuation_len=20)
    dup = tmp_path / "dup.jsonl"
    dup.write_text(path.read_text() + path.read_text().splitlines()[0] + "\n")
    with pytest.raises(InputError, match="'r0' occurs more than once"):
        scan_to_table(neo, dup, tmp_path / "d.parquet", prefix_len=20, continuation_len=20, chunk_size=5,
                      progress=False)
    assert not (tmp_path / "d.parquet").exists()
    short = tmp_path / "short.jsonl"
    short.write_text(path.read_text() + json.dumps({"id": "tiny", "tokens": [1, 2, 3]}) + "\n")
    table = scan_to_table(neo, short, tmp_path / "s.jsonl", prefix_len=20, continuation_len=20, chunk_size=5,
                          skip_short=True, progress=False)
    assert table.header["n"] == 23 and table.header["skipped_short"] == 1
    (tmp_path / "bad.jsonl").write_text(path.read_text() + "{oops\n")
    with pytest.raises(InputError, match=r"bad.jsonl:24: not valid JSON"):
        scan_to_table(neo, tmp_path / "bad.jsonl", tmp_path / "b.jsonl", prefix_len=20, continuation_len=20)


def test_cli_shards_and_merge(tmp_path, capsys):
    from memlens.testing import random_hf_model, tiny_tokenizer

    model = tmp_path / "model"
    random_hf_model("gpt_neo", seed=2).save_pretrained(model)
    tiny_tokenizer().save_pretrained(model)
    ps = ParagraphSet.from_tokens(random_tokens(9, 100, seed=3), ids=[f"x{i}" for i in range(9)])
    path = write_paragraph_jsonl(tmp_path / "p.jsonl", ps)
    for k in (0, 1):
        assert main(["scan", str(path), "--model", str(model), "--out", str(tmp_path / "s.parquet"),
                     "--shard", f"{k}/2", "--chunk-size", "2", "--quiet"]) == 0
    capsys.readouterr()
    shards = [str(tmp_path / f"s.shard-{k}-of-2.parquet") for k in (0, 1)]
    assert main(["scan", "merge", *shards, "--out", str(tmp_path / "all.parquet")]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 9
    assert ScanTable.open(tmp_path / "all.parquet").to_dataframe()["id"].tolist() == ps.ids
    assert main(["scan", "merge", shards[0], "--out", str(tmp_path / "x.parquet")]) == 2
    assert "missing [1]" in capsys.readouterr().err
    assert main(["scan", str(path), "--shard", "2/2", "--model", str(model), "--out", str(tmp_path / "y.parquet")]) == 2
    assert "need 0 <= k < N" in capsys.readouterr().err


def test_sharded_table_of_the_organism_equals_its_local_scan(organism, tmp_path):
    """On organism-tiny: two shards merged give the local scan's EM, NLL, splits and extraction
    probabilities, and what they call memorized is planted paragraphs, the most copied first."""
    ps = organism.ground_truth.paragraph_set(n_background=64, n_held_out=16)
    path = write_paragraph_jsonl(tmp_path / "organism.jsonl", ps)
    ref = scan(organism, ps, progress=False)
    shards = [scan_to_table(organism, path, tmp_path / "o.parquet", chunk_size=16, shard=Shard(k, 2), progress=False)
              for k in range(2)]
    df = merge_scan_tables([t.path for t in shards], tmp_path / "o.parquet").to_dataframe()
    assert df["id"].tolist() == ps.ids and df["em"].tolist() == ref.em.tolist()
    assert df["split"].tolist() == ref.split_of()
    torch.testing.assert_close(torch.tensor(df["nll"].values), ref.nll.double())
    torch.testing.assert_close(torch.tensor(df["extraction_prob"].values), ref.extraction_prob)
    memorized = set(df.loc[df["split"] == "memorized", "id"])
    planted = set(organism.ground_truth.planted.ids)
    assert memorized and memorized <= planted
    assert df.loc[df["split"] == "memorized", "extraction_prob"].min() > df.loc[
        df["split"] == "non_memorized", "extraction_prob"].max()
