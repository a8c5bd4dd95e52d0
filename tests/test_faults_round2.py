"""Bad input and faults, round two (issue #24): concurrent writers, shards that lie, restored()
that forgot, results from another run, settings of the wrong type, and the inputs that gave a
traceback. Each case ends in the right result or one ``memlens: error: ...`` line (rc 2), with
nothing lost."""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import os
import shutil
import subprocess
import sys

import pytest
import torch

from memlens import InputError, ParagraphSet, SparseFineTuner, merge_scan_tables, scan, scan_to_table
from memlens.analyses.scan import ScanResult
from memlens.core.lock import file_lock_path, folder_lock_path
from memlens.core.results import load_result
from memlens.run.cli import main
from memlens.scale.shard import Shard
from memlens.testing import Interrupted, random_tokens, write_paragraph_jsonl

metrics = importlib.import_module("memlens.analyses.scan")  # the scan kernel calls teacher_forced_scores from there


@pytest.fixture
def random_file(neo, tmp_path):
    ps = ParagraphSet.from_tokens(random_tokens(12, 40, neo.vocab_size, seed=7), prefix_len=20,
                                  ids=[f"r{i}" for i in range(12)])
    return ps, write_paragraph_jsonl(tmp_path / "p.jsonl", ps)


@pytest.fixture
def live_pid():
    """The pid of a process that is alive for the test (the owner of a lock held elsewhere)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def hold(lock, pid: int) -> None:
    import socket

    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "2026-12-02T00:00:00"}))


def kw(**extra):
    return dict(prefix_len=20, continuation_len=20, chunk_size=4, progress=False) | extra


# --- data loss: one writer per output ----------------------------------------------------------

def test_a_second_writer_of_a_scan_table_is_refused_and_the_first_loses_nothing(neo, random_file, tmp_path, live_pid):
    ps, path = random_file
    out = tmp_path / "r.parquet"
    shard = Shard(0, 2)
    hold(file_lock_path(shard.output_path(out)), live_pid)  # the same RANK started twice: the first holds the lock
    with pytest.raises(InputError, match=rf"being written by another process \(pid {live_pid}"):
        scan_to_table(neo, path, out, shard=shard, **kw())
    assert not (tmp_path / "r.shard-0-of-2.parquet.parts").exists()  # the refused writer touched nothing
    assert file_lock_path(shard.output_path(out)).exists()  # nor the owner's lock


def test_a_lock_left_by_a_dead_scan_is_taken_over(neo, random_file, tmp_path):
    ps, path = random_file
    out = tmp_path / "r.jsonl"
    hold(file_lock_path(out), dead_pid())
    with pytest.warns(UserWarning, match="taking over the lock"):
        table = scan_to_table(neo, path, out, **kw())
    assert table.to_dataframe()["id"].tolist() == ps.ids and not file_lock_path(out).exists()


def test_the_lock_is_released_when_a_scan_is_interrupted(neo, random_file, tmp_path, monkeypatch):
    ps, path = random_file
    out = tmp_path / "r.jsonl"
    monkeypatch.setattr(metrics, "teacher_forced_scores", Interrupted(metrics.teacher_forced_scores, fail_at=2))
    with pytest.raises(KeyboardInterrupt):
        scan_to_table(neo, path, out, **kw())
    assert not file_lock_path(out).exists()
    monkeypatch.undo()
    assert scan_to_table(neo, path, out, **kw()).header["n"] == 12


def test_a_second_run_on_a_run_folder_is_refused(tmp_path, live_pid, capsys):
    folder = tmp_path / "run"
    hold(folder_lock_path(folder), live_pid)
    for argv in (["run", "--out", str(folder), "--quiet"], ["gradients", "--out", str(folder), "--quiet"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("memlens: error:") and f"pid {live_pid}" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in folder.iterdir()) == [".memlens.lock"]


def test_the_in_memory_scan_output_is_locked_too(neo, random_file, tmp_path, live_pid):
    ps, _ = random_file
    out = tmp_path / "s.safetensors"
    hold(file_lock_path(out), live_pid)
    with pytest.raises(InputError, match="being written by another process"):
        scan(neo, ps, out=out, progress=False)
    assert not out.exists() and not (tmp_path / "s.safetensors.partial").exists()


# --- the Ray engine validates like the local one -----------------------------------------------

def test_ray_engine_refuses_duplicate_ids_and_float_tokens_before_starting(random_file, tmp_path):
    pytest.importorskip("ray")
    from memlens.scale.ray_scan import scan_with_ray
    from memlens.scale.stream import check_records

    ps, path = random_file
    dup = tmp_path / "dup.jsonl"
    dup.write_text(path.read_text() + path.read_text().splitlines()[3] + "\n")
    floats = tmp_path / "floats.jsonl"
    floats.write_text(path.read_text() + json.dumps({"id": "f", "tokens": [1.5] * 40}) + "\n")
    assert check_records(path) == 12
    with pytest.raises(InputError, match=r"dup.jsonl:13 \(paragraph 'r3'\): paragraph id 'r3' occurs more than once"):
        scan_with_ray("organism-tiny", dup, tmp_path / "d.parquet", prefix_len=20, continuation_len=20)
    with pytest.raises(InputError, match=r"floats.jsonl:13 .*'tokens' must be a list of integers"):
        scan_with_ray("organism-tiny", floats, tmp_path / "f.parquet", prefix_len=20, continuation_len=20)
    import ray

    assert not ray.is_initialized()  # refused before Ray started
    assert not (tmp_path / "d.parquet").exists()


# --- merge checks its shards --------------------------------------------------------------------

def shards(neo, path, tmp_path, suffix=".jsonl"):
    return [scan_to_table(neo, path, tmp_path / f"s{suffix}", shard=Shard(k, 2), **kw()).path for k in (0, 1)]


def test_merge_refuses_a_truncated_shard(neo, random_file, tmp_path):
    _, path = random_file
    a, b = shards(neo, path, tmp_path)
    lines = b.read_text().splitlines()
    b.write_text("\n".join(lines[:-2]) + "\n")  # header says n=4, 2 rows left
    with pytest.raises(InputError, match=r"holds 2 rows, its header says 4"):
        merge_scan_tables([a, b], tmp_path / "all.jsonl")
    assert not (tmp_path / "all.jsonl").exists()


def test_merge_refuses_a_torn_shard_with_its_line(neo, random_file, tmp_path, capsys):
    _, path = random_file
    a, b = shards(neo, path, tmp_path)
    text = b.read_text()
    b.write_text(text[: len(text) - 30])  # killed mid-line
    assert main(["scan", "merge", str(a), str(b), "--out", str(tmp_path / "all.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("memlens: error:") and f"{b}:5: not valid JSON" in err


def test_merge_refuses_shards_of_two_versions_of_the_source(neo, random_file, tmp_path):
    ps, path = random_file
    a = scan_to_table(neo, path, tmp_path / "s.parquet", shard=Shard(0, 2), **kw()).path
    edited = ps.tokens.clone()
    edited[5, 25] = (edited[5, 25] + 1) % neo.vocab_size  # r5 (shard 1's chunk) changes between the two scans
    write_paragraph_jsonl(path, ParagraphSet.from_tokens(edited, prefix_len=20, ids=ps.ids))
    b = scan_to_table(neo, path, tmp_path / "s.parquet", shard=Shard(1, 2), **kw()).path
    with pytest.raises(InputError, match="scanned different versions of"):
        merge_scan_tables([a, b], tmp_path / "all.parquet")


def test_merging_a_whole_table_with_a_shard_says_so(neo, random_file, tmp_path):
    _, path = random_file
    whole = scan_to_table(neo, path, tmp_path / "whole.jsonl", **kw()).path
    a, _ = shards(neo, path, tmp_path)
    with pytest.raises(InputError, match=r"whole.jsonl is a whole table; .*s.shard-0-of-2.jsonl is a shard of 2"):
        merge_scan_tables([whole, a], tmp_path / "all.jsonl")


# --- restored() keeps what was there at block entry ---------------------------------------------

def test_restored_puts_back_the_weights_at_block_entry(neo):
    ps = ParagraphSet.from_tokens(random_tokens(3, 40, neo.vocab_size, seed=2), prefix_len=20)
    ft = SparseFineTuner(neo, progress=False)
    name, param = next(iter(ft.params.items()))
    original = {n: p.detach().clone() for n, p in ft.params.items()}
    try:
        with ft.restored():
            ft.unlearn(ps[[0]], ps[[1, 2]], mask="all", steps=1, lr=1e-2)
        with torch.no_grad():
            param[0, 0] += 1.0  # the user's own change between two blocks
        mine = {n: p.detach().clone() for n, p in ft.params.items()}
        with ft.restored():
            ft.unlearn(ps[[0]], ps[[1, 2]], mask="all", steps=1, lr=1e-2)
            assert ft.weights_changed() > 1
        for n, p in ft.params.items():
            assert torch.equal(p.detach(), mine[n]), n  # bit for bit, the user's change kept
    finally:
        with torch.no_grad():
            for n, p in ft.params.items():
                p.copy_(original[n])


# --- run folders: provenance, per-stage recompute, damaged files --------------------------------

@pytest.fixture
def run_copy(tiny_run, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_run, folder)
    return folder


def test_a_result_from_another_model_in_a_run_folder_is_refused(run_copy, organism_cache, capsys):
    assert json.loads((run_copy / "run.json").read_text())["model_name"]  # recorded when the model loaded
    scan_file = run_copy / "scan.safetensors"
    theirs = ScanResult.load(scan_file)
    dataclasses.replace(theirs, provenance=dataclasses.replace(theirs.provenance, model="someone-elses-model")).save(scan_file)
    stamp = (run_copy / "gradients_memorized.safetensors").stat().st_mtime_ns
    assert main(["gradients", "--out", str(run_copy), "--cache-dir", organism_cache, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "computed on the model 'someone-elses-model'" in err and "memlens scan --out" in err
    assert main(["report", "--out", str(run_copy)]) == 2
    assert "someone-elses-model" in capsys.readouterr().err
    assert not (run_copy / "gradients.summary.json").exists() or (
        (run_copy / "gradients_memorized.safetensors").stat().st_mtime_ns == stamp)


def test_a_stage_command_computes_the_stage_again(run_copy, organism_cache, capsys):
    before = {n: load_result(run_copy / n).provenance.created
              for n in ("perturbation_memorized.safetensors", "perturbation_non_memorized.safetensors")}
    stamps = {n: (run_copy / n).stat().st_mtime_ns for n in (*before, "heads.safetensors")}
    assert main(["perturb", "--out", str(run_copy), "--cache-dir", organism_cache, "--quiet"]) == 0
    capsys.readouterr()
    for n in before:
        assert (run_copy / n).stat().st_mtime_ns > stamps[n]
    assert (run_copy / "heads.safetensors").stat().st_mtime_ns == stamps["heads.safetensors"]  # other stages kept
    assert (run_copy / "perturb.summary.json").exists()


def test_a_damaged_result_is_computed_again_on_resume(run_copy, organism_cache, capsys):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = run_copy / "gradients_memorized.safetensors"
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    doc = json.loads(meta["memlens"])
    del doc["fields"]["keys"]  # a field removed
    save_file(tensors, str(path), metadata={"memlens": json.dumps(doc)})
    (run_copy / "gradients.summary.json").unlink()
    with pytest.warns(UserWarning, match=r"field\(s\) \['keys'\] are missing; compute it again; computing it again"):
        assert main(["run", "--model", "organism-tiny", "--out", str(run_copy), "--cache-dir", organism_cache,
                     "--quiet"]) == 0
    capsys.readouterr()
    assert load_result(path).keys and (run_copy / "gradients.summary.json").exists()


@pytest.mark.parametrize("manifest", [
    {"model": "organism-tiny", "paragraphs": "mine.jsonl", "seed": 0, "config": {}},
    ["not", "an", "object"],
    {"model": "organism-tiny", "paragraphs": None, "seed": "0"},
    {"model": "organism-tiny", "paragraphs": None, "seed": 0, "config": "x"},
])
def test_a_damaged_run_json_is_one_line(manifest, tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps(manifest))
    for argv in (["report", "--out", str(folder)], ["gradients", "--out", str(folder), "--quiet"],
                 ["run", "--out", str(folder), "--quiet"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("memlens: error:") and "run.json" in err and len(err.splitlines()) == 1


# --- result envelopes are checked on every load -------------------------------------------------

@pytest.fixture
def scan_file(neo, tmp_path):
    ps = ParagraphSet.from_tokens(random_tokens(4, 40, neo.vocab_size, seed=3), prefix_len=20)
    path = tmp_path / "scan.safetensors"
    scan(neo, ps, progress=False).save(path)
    return path


def rewrite(path, change):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    doc = json.loads(meta["memlens"])
    change(doc, tensors)
    save_file(tensors, str(path), metadata={"memlens": json.dumps(doc)})


@pytest.mark.parametrize("change, says", [
    (lambda d, t: d.pop("kind"), "'kind' is missing"),
    (lambda d, t: d.pop("provenance"), "'provenance' is missing"),
    (lambda d, t: d.pop("fields"), "'fields' is missing"),
    (lambda d, t: d["fields"].pop("em"), r"field\(s\) \['em'\] are missing"),
    (lambda d, t: d.__setitem__("version", "1"), "version is '1', not an integer"),
    (lambda d, t: t.__setitem__("em", t["em"][:, None]), "field 'em' is a 2-D int64 tensor"),
    (lambda d, t: d["provenance"].__setitem__("model", 3), "a damaged provenance"),
    (lambda d, t: d["fields"].__setitem__("min_k", "0.2"), "field 'min_k' is a str"),
])
def test_show_on_a_damaged_envelope_is_one_line(scan_file, change, says, capsys):
    assert main(["show", str(scan_file)]) == 0
    capsys.readouterr()
    rewrite(scan_file, change)
    assert main(["show", str(scan_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("memlens: error:") and len(err.splitlines()) == 1
    assert re.search(says, err), err


def test_a_stage_recomputes_a_result_with_a_field_removed(neo, scan_file, tmp_path):
    from memlens.run.context import RunContext
    from memlens.run.stage import saved

    fresh = ScanResult.load(scan_file)
    rewrite(scan_file, lambda d, t: d["fields"].pop("nll"))
    calls = []

    def compute():
        calls.append(1)
        return fresh

    with pytest.warns(UserWarning, match=r"\['nll'\] are missing; compute it again; computing it again"):
        result = saved(RunContext(tmp_path), scan_file, ScanResult, compute)
    assert calls == [1] and result is fresh and torch.equal(ScanResult.load(scan_file).nll, fresh.nll)


def test_texts_over_the_header_limit_are_saved(neo, tmp_path):
    big = "memorized " * 10_100_000  # 101 MB: more than a safetensors header may hold
    ps = ParagraphSet(random_tokens(2, 40, neo.vocab_size, seed=4), 20, 20, ["a", "b"], [big, None])
    out = tmp_path / "big.safetensors"
    scan(neo, ps, out=out, progress=False)
    back = ScanResult.load(out)
    assert back.paragraphs.texts == [big, None] and out.stat().st_size > 100_000_000


def test_a_full_disk_while_saving_is_an_os_error(neo, tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*a, **k):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                              "\"No space left on device\" })")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    result = scan(neo, ParagraphSet.from_tokens(random_tokens(2, 40, neo.vocab_size), prefix_len=20), progress=False)
    with pytest.raises(OSError, match="No space left on device") as e:
        result.save(tmp_path / "r.safetensors")
    assert e.value.filename == str(tmp_path / "r.safetensors") and not list(tmp_path.iterdir())


# --- settings of the wrong type, seeds and shards out of range ----------------------------------

@pytest.mark.parametrize("toml, says", [
    ('skip_short = "false"', "skip_short = 'false': must be true or false"),
    ('[unlearn]\nedit = "no"', r"\[unlearn\] edit = 'no': must be true or false"),
    ("[scan]\nnon_memorized_max_em = true", r"\[scan\] non_memorized_max_em = True: must be an integer"),
    ('[unlearn]\nmasks = ["all", ["topk"]]', r"\[unlearn\] masks = \['all', \['topk'\]\]: must be a list of strings"),
    ('[unlearn]\nlr = "1e-3"', r"\[unlearn\] lr = '1e-3': must be a number"),
    ("seed = 99999999999999999999", "seed = 99999999999999999999: must be an integer from 0 to 2\\*\\*63 - 1"),
])
def test_settings_of_the_wrong_type_are_one_line(toml, says, tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(toml + "\n")
    assert main(["config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("memlens: error:") and re.search(says, err), err


def test_a_huge_seed_is_refused_before_any_work(tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main(["run", "--seed", "99999999999999999999", "--out", str(tmp_path / "r"), "--cache-dir", str(cache)]) == 2
    assert "from 0 to 2**63 - 1" in capsys.readouterr().err
    assert main(["organism", "build", "--size", "tiny", "--seed", "99999999999999999999", "--cache-dir", str(cache)]) == 2
    assert "organism seed" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (cache.exists() and list(cache.rglob("*.building")))


def test_a_rank_outside_the_world_size_says_so():
    with pytest.raises(InputError, match="RANK=3, WORLD_SIZE=2: the rank must be from 0 to WORLD_SIZE - 1"):
        Shard.from_env({"RANK": "3", "WORLD_SIZE": "2"})


# --- paragraph files: header lines, huge token ids ----------------------------------------------

@pytest.mark.parametrize("header, says", [
    ({"memlens": "ParagraphSet", "prefix_len": "fifty", "continuation_len": 50}, "prefix_len is 'fifty'"),
    ({"memlens": "ParagraphSet", "prefix_len": 50}, "continuation_len is missing"),
])
def test_a_bad_paragraph_set_header_names_the_line(header, says, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(header) + "\n" + json.dumps({"id": "a", "tokens": list(range(100))}) + "\n")
    with pytest.raises(InputError, match=f"p.jsonl:1: the ParagraphSet header's {says}"):
        ParagraphSet.from_jsonl(path)


def test_token_ids_beyond_int64_are_refused(neo, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "huge", "tokens": [2**70] + [1] * 99}) + "\n")
    with pytest.raises(InputError, match=r"p.jsonl:1 \(paragraph 'huge'\): token id 1180591620717411303424"):
        ParagraphSet.from_jsonl(path)
    table = pa.table({"id": ["u"], "tokens": pa.array([[2**64 - 1] + [1] * 39], type=pa.list_(pa.uint64()))})
    pq.write_table(table, tmp_path / "p.parquet")
    with pytest.raises(InputError, match=r"p.parquet:1 \(paragraph 'u'\): token id 18446744073709551615"):
        scan_to_table(neo, tmp_path / "p.parquet", tmp_path / "out.jsonl", **kw())


# --- the analyses say what they expected --------------------------------------------------------

def test_analyses_take_texts_or_say_they_expect_a_paragraph_set(neo):
    from memlens.core.data import as_paragraph_set

    texts = ["the quick brown fox jumps over the lazy dog " * 20] * 2
    res = scan(neo, texts, progress=False)
    assert len(res.em) == 2 and res.paragraphs.prefix_len == 50
    assert torch.equal(res.paragraphs.tokens, ParagraphSet.from_texts(texts, neo).tokens)
    assert torch.equal(scan(neo, res.paragraphs.tokens, progress=False).em, res.em)  # a token tensor too
    # what scan and SparseFineTuner.unlearn/edit say of anything else (the tests' type checker would stop a
    # wrongly typed call before it, so the check is called directly)
    with pytest.raises(InputError, match=r"scan expects a ParagraphSet, got a int; build one with ParagraphSet.from_texts"):
        as_paragraph_set(5, neo, "scan")
    with pytest.raises(InputError, match=r"unlearn \(target\) expects a ParagraphSet, got a list of 2 int"):
        as_paragraph_set([1, 2], neo, "unlearn (target)")
    ft = SparseFineTuner(neo, progress=False)
    with pytest.raises(InputError, match="fewer than prefix_len \\+ continuation_len"):
        ft.unlearn(["x"], res.paragraphs)  # texts are tokenized, then refused as too short, not an AttributeError


# --- smaller ------------------------------------------------------------------------------------

def test_a_refused_streaming_call_leaves_nothing_that_blocks_the_corrected_one(neo, random_file, tmp_path):
    _, path = random_file
    out = tmp_path / "t.jsonl"
    with pytest.raises(InputError, match="exceed the model's context of 128"):
        scan_to_table(neo, path, out, prefix_len=100, continuation_len=100, progress=False)
    assert not (tmp_path / "t.jsonl.parts").exists() and not file_lock_path(out).exists()
    long_ids = tmp_path / "wide.jsonl"
    long_ids.write_text(json.dumps({"id": "w", "tokens": [600] * 40}) + "\n")  # outside the vocabulary of 512
    with pytest.raises(InputError, match="outside the model's vocabulary"):
        scan_to_table(neo, long_ids, out, **kw())
    assert not (tmp_path / "t.jsonl.parts").exists()
    assert scan_to_table(neo, path, out, **kw()).header["n"] == 12


def test_a_non_utf8_byte_in_a_streamed_file_names_its_line_and_offset(neo, random_file, tmp_path):
    _, path = random_file
    good = path.read_bytes()
    lines = good.split(b"\n")
    offset = len(b"\n".join(lines[:5])) + 1 + 9
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join(lines[:5]) + b"\n" + lines[5][:9] + b"\xff" + lines[5][9:] + b"\n" + b"\n".join(lines[6:]))
    with pytest.raises(InputError, match=rf"bad.jsonl:6: not UTF-8 text \(byte {offset} of the file, column 10"):
        scan_to_table(neo, bad, tmp_path / "t.jsonl", **kw())
    assert bad.read_bytes()[offset] == 0xFF


def test_error_list_in_the_docs_names_every_case():
    from pathlib import Path

    text = " ".join((Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text().split())
    for phrase in ("being written by another process", "taking over the lock", "rows, its header says",
                   "scanned different versions", "computed on the model", "must be true or false",
                   "a damaged result envelope", "expects a ParagraphSet", "from 0 to 2**63 - 1",
                   "the rank must be from 0", "is damaged (", "not UTF-8 text", "a whole table"):
        assert phrase in text, phrase
    assert os.path.exists(Path(__file__).resolve().parents[1] / "docs" / "scan.md")
