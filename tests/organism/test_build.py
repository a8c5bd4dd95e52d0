"""Building: corpus determinism and resuming an interrupted training run (on a micro config)."""

import dataclasses

import pytest
import torch

from memlens.organism.config import PRESETS
from memlens.organism.corpus import clean_text, corpus_hash, load_documents
from memlens.organism.paragraphs import cut_windows
from memlens.organism.train import build_organism

MICRO = dataclasses.replace(
    PRESETS["tiny"], size="micro", vocab_size=300, n_layers=2, d_model=32, n_heads=2, steps=6,
    batch_size=4, tokenizer_chars=200_000, planted_copies=(1, 4), planted_per_level=2, n_held_out=4,
)


def test_corpus_is_deterministic_and_clean():
    a, b = load_documents(), load_documents()
    assert corpus_hash(a) == corpus_hash(b) and len(a) > 100
    assert any(d.source.startswith("pydoc_data:") for d in a) and any(d.source.endswith(".py") for d in a)
    assert all("\t" not in d.text and "\n\n\n" not in d.text for d in a)
    assert clean_text("a \t\n\n\n\nb") == "a\n\nb\n"


def test_windows_drop_duplicates():
    doc = list(range(1, 101))
    other = list(range(200, 300))
    kept = cut_windows([doc, doc, other], 100, 35)
    assert kept == [other]


def test_interrupted_build_resumes_to_the_same_model(tmp_path):
    full = build_organism(MICRO, 0, tmp_path / "full", progress=False)
    assert build_organism(MICRO, 0, tmp_path / "resumed", progress=False, checkpoint_every=2, stop_after=3) is None
    assert (tmp_path / "resumed" / "checkpoint.pt").exists()
    resumed = build_organism(MICRO, 0, tmp_path / "resumed", progress=False, checkpoint_every=2)
    assert not (tmp_path / "resumed" / "checkpoint.pt").exists()
    assert torch.equal(full.planted.tokens, resumed.planted.tokens)
    from safetensors.torch import load_file

    a = load_file(tmp_path / "full" / "model" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_a_damaged_checkpoint_is_set_aside(tmp_path):
    """A checkpoint torn by a kill must not wedge every later build: training restarts."""
    from memlens.organism.train import _load_checkpoint

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"\x80\x04 torn")
    with pytest.warns(UserWarning, match="damaged"):
        assert _load_checkpoint(path, model, opt, sched) == (0, [])
    assert not path.exists()


def test_a_built_organism_is_readable_by_other_users(tmp_path, monkeypatch):
    """The build folder is a 0700 temporary and transformers writes model.safetensors 0600: a
    shared cache must give every file the permissions the umask gives."""
    import os
    import stat

    from memlens.core.io import DIR_MODE, FILE_MODE
    from memlens.organism import build

    monkeypatch.setitem(PRESETS, "micro", MICRO)
    folder = build("micro", 0, tmp_path, progress=False)
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert any(p.name == "model.safetensors" for p in files)
    assert {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in files} == {p.name: FILE_MODE for p in files}
    assert stat.S_IMODE(os.stat(folder).st_mode) == DIR_MODE
