import json

import pytest
import torch

from memlens import InputError, ParagraphSet
from memlens.testing import random_tokens


def make(n=5, length=100):
    return ParagraphSet.from_tokens(random_tokens(n, length), prefix_len=50, copies=list(range(n)))


def test_split_and_indexing():
    ps = make()
    assert ps.tokens.shape == (5, 100) and ps.prefix_len == 50 and ps.continuation_len == 50
    assert torch.equal(ps.prefixes, ps.tokens[:, :50]) and torch.equal(ps.continuations, ps.tokens[:, 50:])
    p = ps[2]
    assert p.id == "2" and torch.equal(p.prefix, ps.tokens[2, :50]) and p.metadata["copies"] == 2
    sub = ps[1:3]
    assert isinstance(sub, ParagraphSet) and sub.ids == ["1", "2"] and sub.metadata["copies"] == [1, 2]
    assert ps[[4, 0]].ids == ["4", "0"]
    assert ps[torch.tensor([True, False, True, False, False])].ids == ["0", "2"]
    assert torch.equal(ps.copies, torch.arange(5))


def test_filter_concat_and_unique_ids():
    ps = make()
    assert ps.filter(lambda p: p.metadata["copies"] > 2).ids == ["3", "4"]
    both = ps[:2] + ParagraphSet.from_tokens(random_tokens(2, 100, seed=3), ids=["a", "b"])
    assert both.ids == ["0", "1", "a", "b"] and len(both) == 4
    assert both.metadata["copies"] == [0, 1, None, None]
    with pytest.raises(InputError, match="unique"):
        ps + ps


def test_longer_rows_are_cut_and_short_rows_rejected():
    ps = ParagraphSet.from_tokens(random_tokens(2, 120), prefix_len=50, continuation_len=50)
    assert ps.tokens.shape == (2, 100)
    with pytest.raises(InputError, match="fewer than prefix_len"):
        ParagraphSet.from_tokens(random_tokens(2, 80), prefix_len=50, continuation_len=50)


def test_concat_rejects_other_split():
    with pytest.raises(InputError, match="differ in length"):
        make() + ParagraphSet.from_tokens(random_tokens(2, 100), prefix_len=40)


def test_validate_vocab_and_context():
    ps = make()
    ps.tokens[3, 7] = 10_000
    with pytest.raises(InputError, match="paragraph '3' has token id 10000"):
        ps.validate(vocab_size=512)
    with pytest.raises(InputError, match="exceed the model's context of 64"):
        make().validate(512, n_ctx=64)


def test_save_load_roundtrip(tmp_path):
    ps = make()
    ps.save(tmp_path / "p.jsonl")
    back = ParagraphSet.load(tmp_path / "p.jsonl")
    assert torch.equal(back.tokens, ps.tokens) and back.ids == ps.ids and back.metadata["copies"] == list(range(5))


def test_jsonl_tokens_and_texts(tmp_path, neo):
    f = tmp_path / "p.jsonl"
    text = "The quick brown fox jumps over the lazy dog. " * 20
    f.write_text(json.dumps({"id": "t", "tokens": list(range(1, 101)), "source": "x"}) + "\n\n"
                 + json.dumps({"id": "u", "text": text}) + "\n")
    ps = ParagraphSet.from_jsonl(f, neo)
    assert ps.ids == ["t", "u"] and ps.tokens[0].tolist() == list(range(1, 101))
    assert ps.tokens[1].tolist() == neo.to_tokens(text)[0, :100].tolist()
    assert ps.metadata["source"] == ["x", None]


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "empty"),
        ('{"id": "a", "tokens": [1, 2]\n', r"p.jsonl:1: not valid JSON"),
        ('{"id": "a", "tokens": ' + str(list(range(100))) + '}\n[1, 2]\n', r"p.jsonl:2: each line must be a JSON object"),
        ('{"id": "a", "tokens": [1, 2, 3]}\n', r"p.jsonl:1 \(paragraph 'a'\) has 3 tokens, fewer than"),
        ('{"id": "a", "tokens": [1, "x"]}\n', r"p.jsonl:1 \(paragraph 'a'\): 'tokens' must be a list of integers"),
        ('{"id": "a", "text": "hello"}\n', "need a model"),
        ('{"id": "ok", "tokens": ' + str(list(range(100))) + '}\n{"id": "deep", "tokens": ' + "[" * 100_000
         + "]" * 100_000 + "}\n", r"p.jsonl:2: JSON nested too deeply to read"),
    ],
)
def test_jsonl_bad_input(tmp_path, content, message):
    f = tmp_path / "p.jsonl"
    f.write_text(content)
    with pytest.raises(InputError, match=message):
        ParagraphSet.from_jsonl(f)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        ParagraphSet.from_jsonl(tmp_path / "nope.jsonl")


def test_csv_with_tokens_and_bad_rows(tmp_path):
    f = tmp_path / "p.csv"
    toks = " ".join(str(i) for i in range(1, 101))
    f.write_text(f"id,tokens,count\na,{toks},3\nb,{toks},4\n")
    ps = ParagraphSet.from_csv(f)
    assert ps.ids == ["a", "b"] and ps.metadata["count"] == ["3", "4"]
    f.write_text(f"id,tokens,count\na,{toks},3\nb,{toks}\n")
    with pytest.raises(InputError, match=r"p.csv:3: the row has a different number of fields"):
        ParagraphSet.from_csv(f)
    f.write_text("id,words\na,hello\n")
    with pytest.raises(InputError, match="no text column"):
        ParagraphSet.from_csv(f)


def test_csv_reference_release(neo, shared_data):
    """The paper's own release: multi-line quoted fields, HTML, code."""
    path = shared_data / "stoehr2024_gpt-neo-125M_memorized.csv"
    ps = ParagraphSet.from_csv(path, neo, prefix_len=20, continuation_len=20)
    assert len(ps) == 442
    assert set(ps.metadata) >= {"count", "em", "nll"}
    assert all(t for t in ps.texts) and any("\n" in t for t in ps.texts)


def test_csv_keeps_line_breaks_in_quoted_fields_and_ignores_a_bom(tmp_path):
    f = tmp_path / "p.csv"
    tokens = " ".join(str(i) for i in range(1, 101))
    f.write_bytes(("\ufeffid,tokens,note\r\n" f'a,{tokens},"line one\r\nline two"\r\n').encode("utf-8"))
    ps = ParagraphSet.from_csv(f)
    assert ps.ids == ["a"] and ps.metadata["note"] == ["line one\r\nline two"]


def test_saved_paragraph_set_reads_back_through_from_file(tmp_path):
    ps = ParagraphSet.from_tokens(torch.arange(1, 61).reshape(2, 30), prefix_len=10, ids=["a", "b"])
    ps.save(tmp_path / "p.jsonl")
    back = ParagraphSet.from_file(tmp_path / "p.jsonl")  # what the CLI reads: the header gives the split
    assert back.ids == ["a", "b"] and (back.prefix_len, back.continuation_len) == (10, 20)
    assert torch.equal(back.tokens, ps.tokens)


def test_skip_short(tmp_path):
    f = tmp_path / "p.jsonl"
    rows = [{"id": "long", "tokens": list(range(1, 101))}, {"id": "short", "tokens": [1, 2, 3]}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError, match="skip-short"):
        ParagraphSet.from_file(f)
    with pytest.warns(UserWarning, match="skipped 1 paragraph"):
        ps = ParagraphSet.from_file(f, skip_short=True)
    assert ps.ids == ["long"] and ps.skipped == ["short"]
