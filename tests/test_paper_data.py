"""The paper's data pipeline on small arrays and tensors the tests write: the Carlini arrays, the
Appendix A.1 filters as the official code applies them, and the released .pt token tensors."""

import numpy as np
import pytest
import torch

from memlens import InputError
from memlens.core.paper_data import keyword_variants, paper_filters, read_carlini_arrays, read_token_tensor


def varied(n, seed, vocab=1000):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(vocab, generator=g)[:100] for _ in range(n)])


def test_carlini_arrays_become_paragraphs_with_counts(tmp_path):
    prompts = varied(4, 0).numpy()
    np.save(tmp_path / "prompts_100.npy", prompts)
    np.save(tmp_path / "counts_100.npy", np.array([3, 0, 7, 1]))
    ps = read_carlini_arrays(tmp_path / "prompts_100.npy", tmp_path / "counts_100.npy")
    assert len(ps) == 4 and ps.prefix_len == 50 and ps.continuation_len == 50
    assert ps.metadata["count"] == [3, 0, 7, 1] and ps.ids == ["0", "1", "2", "3"]
    assert torch.equal(ps.tokens, torch.from_numpy(prompts).long())
    np.save(tmp_path / "short.npy", np.array([1, 2]))
    with pytest.raises(InputError, match="4 paragraphs"):
        read_carlini_arrays(tmp_path / "prompts_100.npy", tmp_path / "short.npy")
    np.save(tmp_path / "floats.npy", prompts.astype("float32"))
    with pytest.raises(InputError, match="integer array"):
        read_carlini_arrays(tmp_path / "floats.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="plain numbers"):
        read_carlini_arrays(tmp_path / "objects.npy")
    with pytest.raises(InputError, match="no such file"):
        read_carlini_arrays(tmp_path / "missing.npy")


def test_keyword_variants_follow_the_code():
    assert keyword_variants(["license"]) == ["license", "LICENSE", "License", " license", " LICENSE", " License"]


def test_each_filter_drops_what_the_code_drops_and_reports_it():
    tokens = varied(8, 1, vocab=900)  # ids 901..903 (the keyword's) appear only where placed
    tokens[1, :] = torch.arange(100) % 40  # 40 unique tokens: < 50% -> dropped
    tokens[2, :] = torch.arange(100) % 50  # exactly 50: the code keeps n_unique > 50 -> dropped
    tokens[3, :51] = torch.arange(51)  # 51 unique at least -> kept by that filter
    tokens[3, 51:] = 0
    tokens[4, 10], tokens[4, 70] = 901, 902  # both tokens of the keyword "ab" anywhere -> dropped
    tokens[5, 10] = 901  # only one of them -> kept
    tokens[6, 99] = 50256  # an EOS token -> dropped
    from memlens import ParagraphSet

    ps = ParagraphSet(tokens, 50, ids=[f"p{i}" for i in range(8)], metadata={"count": [5, 5, 5, 5, 5, 5, 5, 0]})
    vocab = {"ab": [901, 902, 50256], "AB": [901, 902], "Ab": [901, 902], " ab": [903], " AB": [903], " Ab": [903]}
    report = paper_filters(ps, keywords=["ab"], tokenize=lambda s: vocab[s])
    assert report.paragraphs.ids == ["p0", "p3", "p5"]
    assert report.dropped == {"count_zero": 1, "few_unique_tokens": 2, "keywords": 1, "eos_token": 1}
    assert report.n_before == 8 and list(report.to_dataframe()["filter"])[-1] == "kept"
    ranged = paper_filters(ps, min_unique_share=0.0, drop_eos=False, count_range=(1, 4))
    assert ranged.dropped["count_range"] == 7 and len(ranged.paragraphs) == 0
    with pytest.raises(InputError, match="tokenize"):
        paper_filters(ps, keywords=["ab"])
    with pytest.raises(InputError, match="'count' column"):
        paper_filters(ParagraphSet(tokens, 50))


def test_released_token_tensors_are_read_safely(tmp_path):
    good = varied(3, 2)
    torch.save(good, tmp_path / "50_50_preds.pt")
    ps = read_token_tensor(tmp_path / "50_50_preds.pt")
    assert torch.equal(ps.tokens, good) and ps.prefix_len == 50
    torch.save(good[:, :60], tmp_path / "short.pt")
    with pytest.raises(InputError, match=r"\[N, 100\] integer tensor"):
        read_token_tensor(tmp_path / "short.pt")
    torch.save({"tokens": good}, tmp_path / "dict.pt")
    with pytest.raises(InputError, match="holds a dict"):
        read_token_tensor(tmp_path / "dict.pt")

    class Payload:  # a pickled object: weights_only refuses it, nothing runs
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save(Payload(), tmp_path / "evil.pt")
    with pytest.raises(InputError, match="weights_only=True"):
        read_token_tensor(tmp_path / "evil.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="weights_only=True"):
        read_token_tensor(tmp_path / "junk.pt")
