import importlib
import json

import pytest
import torch

from memlens import InputError, ParagraphSet, ScanResult, greedy_decode, scan
from memlens.testing import Interrupted, random_tokens


@pytest.fixture(scope="module")
def planted_set(neo):
    """Paragraphs of the random GPT-Neo with known EM: the continuation follows greedy decoding
    for k tokens (k = 0, 5, 20, 30), then breaks."""
    base = random_tokens(8, 60, neo.vocab_size, seed=11)
    gen = greedy_decode(neo, base[:, :30], 30)
    tokens = torch.cat([base[:, :30], gen], 1)
    ems = [30, 30, 20, 5, 0, 0, 12, 30]
    for i, k in enumerate(ems):
        if k < 30:
            tokens[i, 30 + k] = (gen[i, k] + 1) % neo.vocab_size
    return ParagraphSet.from_tokens(tokens, prefix_len=30, ids=[f"p{i}" for i in range(8)]), ems


def test_scan_em_and_splits(neo, planted_set):
    ps, ems = planted_set
    res = scan(neo, ps, batch_size=3, progress=False)
    assert res.em.tolist() == ems
    assert res.nll.shape == (8,) and res.nll.dtype == torch.float32
    assert res.memorized().ids == ["p0", "p1", "p7"]
    assert res.non_memorized().ids == ["p3", "p4", "p5"]
    assert res.partly_memorized().ids == ["p2", "p6"]
    s = res.summary()
    assert s["memorized"]["count"] == 3 and s["partly"]["count"] == 2 and s["non_memorized"]["count"] == 3
    df = res.to_dataframe()
    assert list(df.columns[:4]) == ["paragraph", "em", "nll", "split"]
    strict = scan(neo, ps, non_memorized_max_em=4, memorized_min_em=20, progress=False)
    assert strict.memorized().ids == ["p0", "p1", "p2", "p7"] and strict.non_memorized().ids == ["p4", "p5"]


def test_scan_save_load_and_plot(neo, planted_set, tmp_path):
    ps, _ = planted_set
    res = scan(neo, ps, progress=False)
    res.save(tmp_path / "r.safetensors")
    back = ScanResult.load(tmp_path / "r.safetensors")
    assert back.em.tolist() == res.em.tolist() and torch.allclose(back.nll, res.nll)
    assert torch.equal(back.paragraphs.tokens, ps.tokens)
    fig = res.plot()
    assert sum(fig.data[0].x) == sum(res.em.tolist())


def test_scan_resumes_without_recomputing(neo, planted_set, tmp_path, monkeypatch):
    ps, ems = planted_set
    out = tmp_path / "scan.safetensors"
    scan_mod = importlib.import_module("memlens.analyses.scan")  # the package's `scan` name is the function

    real = scan_mod.teacher_forced_scores
    monkeypatch.setattr(scan_mod, "teacher_forced_scores", Interrupted(real, fail_at=2))
    with pytest.raises(KeyboardInterrupt):
        scan(neo, ps, batch_size=3, out=out, progress=False)
    assert not out.exists()  # never a half-written results file
    partial = out.with_name(out.name + ".partial")
    assert len(partial.read_text().strip().split("\n")) == 1 + 3
    counted = Interrupted(real)
    monkeypatch.setattr(scan_mod, "teacher_forced_scores", counted)
    res = scan(neo, ps, batch_size=3, out=out, progress=False)
    assert sum(counted.calls) == 5  # only the 5 paragraphs not yet done
    assert res.em.tolist() == ems and out.exists() and not partial.exists()
    assert ScanResult.load(out).em.tolist() == ems


def test_scan_refuses_a_partial_of_another_model(neo, planted_set, tmp_path):
    ps, _ = planted_set
    out = tmp_path / "scan.safetensors"
    out.with_name(out.name + ".partial").write_text(json.dumps({"model": "other", "prefix_len": 30, "continuation_len": 30}) + "\n")
    with pytest.raises(InputError, match="another model"):
        scan(neo, ps, out=out, progress=False)


def test_scan_bad_input(neo):
    with pytest.raises(InputError, match="empty"):
        scan(neo, ParagraphSet.from_tokens(random_tokens(2, 100))[[]], progress=False)
    bad = ParagraphSet.from_tokens(random_tokens(2, 100), ids=["ok", "bad"])
    bad.tokens[1, 60] = neo.vocab_size + 3
    with pytest.raises(InputError, match="paragraph 'bad' has token id"):
        scan(neo, bad, progress=False)
    long = ParagraphSet.from_tokens(random_tokens(2, 200), prefix_len=100, continuation_len=100)
    with pytest.raises(InputError, match="exceed the model's context"):
        scan(neo, long, progress=False)


def test_scan_resume_survives_a_torn_last_line(neo, planted_set, tmp_path):
    ps, ems = planted_set
    out = tmp_path / "scan.safetensors"
    partial = out.with_name(out.name + ".partial")
    header = json.dumps({"model": neo.name, "prefix_len": 30, "continuation_len": 30})
    partial.write_text(header + "\n" + json.dumps({"id": "p0", "em": 30, "nll": 0.1}) + "\n" + '{"id": "p1", "em"')
    res = scan(neo, ps, out=out, progress=False)
    assert res.em.tolist() == ems


def test_reference_columns_do_not_collide_with_scan_results(neo, planted_set, tmp_path):
    """The released CSV carries the paper's own em/nll: they stay beside the computed ones."""
    ps, ems = planted_set
    given = ParagraphSet(ps.tokens, ps.prefix_len, ps.continuation_len, ps.ids,
                         metadata={"em": [99] * len(ps), "nll": [-1.0] * len(ps)})
    res = scan(neo, given, progress=False)
    df = res.to_dataframe()
    assert df["em"].tolist() == ems and df["reference_em"].tolist() == [99] * len(ps)
    res.save(tmp_path / "r.safetensors")
    back = ScanResult.load(tmp_path / "r.safetensors").to_dataframe()
    assert back["reference_nll"].tolist() == [-1.0] * len(ps) and back["em"].tolist() == ems


def test_resumed_scan_rescores_paragraphs_whose_content_changed(neo, planted_set, tmp_path, monkeypatch):
    """A partial scan's rows carry a hash of each paragraph's tokens: a paragraph edited under the
    same id between the interruption and the resume is scored again, not given its stale EM."""
    ps, ems = planted_set
    out = tmp_path / "scan.safetensors"
    scan_mod = importlib.import_module("memlens.analyses.scan")
    real = scan_mod.teacher_forced_scores
    monkeypatch.setattr(scan_mod, "teacher_forced_scores", Interrupted(real, fail_at=2))
    with pytest.raises(KeyboardInterrupt):
        scan(neo, ps, batch_size=3, out=out, progress=False)  # p0, p1, p2 done
    monkeypatch.setattr(scan_mod, "teacher_forced_scores", real)
    edited = ps.tokens.clone()
    edited[0, 30 + 3] = (edited[0, 30 + 3] + 1) % neo.vocab_size  # p0 now breaks after 3 tokens
    changed = ParagraphSet.from_tokens(edited, prefix_len=30, ids=ps.ids)
    with pytest.warns(UserWarning, match="1 paragraph\\(s\\) changed since the interrupted scan"):
        res = scan(neo, changed, batch_size=3, out=out, progress=False)
    assert res.em.tolist() == [3] + ems[1:]  # p0's stale EM (30) is not kept
    assert res.em.tolist() == scan(neo, changed, progress=False).em.tolist()


def test_scan_checks_its_output_and_batch_size_first(neo, planted_set, tmp_path):
    ps, _ = planted_set
    (tmp_path / "afile").write_text("")
    with pytest.raises(InputError, match="is a file, not a folder"):
        scan(neo, ps, out=tmp_path / "afile" / "scan.safetensors", progress=False)
    for bad in (0, -1):
        with pytest.raises(InputError, match="batch_size must be >= 1"):
            scan(neo, ps, batch_size=bad, progress=False)
    assert not list(tmp_path.glob("*.partial"))


def test_scan_sets_aside_what_a_kill_left(neo, planted_set, tmp_path):
    """A damaged partial is refused with what to do; the temporary file of a save killed midway
    is removed by the next scan (and only that file's)."""
    ps, ems = planted_set
    out = tmp_path / "scan.safetensors"
    partial = out.with_name(out.name + ".partial")
    partial.write_text("\x00\x00garbage\n")
    with pytest.raises(InputError, match="is damaged .*delete it and scan again"):
        scan(neo, ps, out=out, progress=False)
    partial.unlink()
    (tmp_path / ".scan.safetensors.x1y2.tmp").write_bytes(b"half a file")
    (tmp_path / ".other.json.x1y2.tmp").write_bytes(b"not ours")
    assert scan(neo, ps, out=out, progress=False).em.tolist() == ems
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.json.x1y2.tmp", "scan.safetensors"]


@torch.no_grad()
def test_extraction_probability_is_the_product_of_token_probabilities(neo, planted_set, tmp_path):
    ps, ems = planted_set
    res = scan(neo, ps, batch_size=3, progress=False)
    logits = neo(ps.tokens[:, :-1])[:, ps.prefix_len - 1 :].double()
    token_p = torch.softmax(logits, -1).gather(-1, ps.continuations[..., None]).squeeze(-1)
    torch.testing.assert_close(res.extraction_prob, token_p.prod(-1), rtol=1e-4, atol=0)
    torch.testing.assert_close(res.extraction_logprob, -res.nll.double() * ps.continuation_len, rtol=1e-5, atol=1e-4)
    df = res.to_dataframe()
    assert df["extraction_prob"].tolist() == pytest.approx(token_p.prod(-1).tolist(), rel=1e-4)
    res.save(tmp_path / "r.safetensors")  # kept by save/load, and by a resumed scan
    assert torch.equal(ScanResult.load(tmp_path / "r.safetensors").extraction_logprob, res.extraction_logprob)


def test_min_k_column_equals_a_hand_computation(neo, planted_set, tmp_path):
    """The min-K% NLL column: the mean of the k = round(min_k x continuation) largest token NLLs
    of each continuation, from the same pass; the share is a setting and is checked."""
    import torch.nn.functional as F

    from memlens.core.metrics import check_min_k

    ps, _ = planted_set
    res = scan(neo, ps, min_k=0.3, progress=False)
    with torch.no_grad():
        logits = neo(ps.tokens)[:, ps.prefix_len - 1 : -1]
    token_nll = -F.log_softmax(logits.float(), -1).gather(-1, ps.continuations[..., None]).squeeze(-1)
    k = round(0.3 * ps.continuation_len)
    hand = token_nll.sort(dim=-1, descending=True).values[:, :k].mean(-1)
    assert torch.allclose(res.min_k_nll, hand, atol=1e-4)
    assert bool((res.min_k_nll >= res.nll - 1e-5).all())  # the hardest tokens' mean is at least the mean
    assert res.to_dataframe()["min_k_nll"].tolist() == pytest.approx(hand.tolist(), abs=1e-4)
    back = ScanResult.load(res.save(tmp_path / "r.safetensors"))
    assert back.min_k == 0.3 and torch.equal(back.min_k_nll, res.min_k_nll)
    every = scan(neo, ps, min_k=1.0, progress=False)
    assert torch.allclose(every.min_k_nll, every.nll, atol=1e-5)
    for bad in (0, 1.5, True, "0.2"):
        with pytest.raises(InputError, match="min_k"):
            check_min_k(bad)
