"""The organism cache: a corrupted or partial cache is detected and rebuilt, never loaded."""

import shutil

import pytest

from memlens.core.errors import CacheError
from memlens.organism import build, organism_path
from memlens.organism.cache import verify


@pytest.fixture
def cache_copy(organism, organism_cache, tmp_path):
    """A private copy of the built tiny organism's cache folder."""
    src = organism_path("tiny", 0, organism_cache)
    dst = organism_path("tiny", 0, tmp_path)
    shutil.copytree(src, dst)
    return tmp_path, dst


def test_verified_cache_loads_without_rebuild(cache_copy, monkeypatch):
    root, folder = cache_copy
    import memlens.organism.train as train

    monkeypatch.setattr(train, "build_organism", lambda *a, **k: pytest.fail("rebuilt a valid cache"))
    assert build("tiny", 0, root) == folder


WRONG_SHAPE_MANIFESTS = {
    "manifest_is_a_list": [1, 2],
    "files_is_a_list": {"format": 1, "files": ["model/model.safetensors"]},
    "record_without_hash": {"format": 1, "files": {"model/config.json": {"bytes": 3}}},
    "deeply_nested": None,
}


@pytest.mark.parametrize("damage", ["flip_weight_byte", "drop_manifest", "delete_tokenizer", *WRONG_SHAPE_MANIFESTS])
def test_damaged_cache_is_detected(cache_copy, damage):
    """Every kind of damage is a CacheError (which rebuilds), never a KeyError or RecursionError."""
    import json

    from memlens.organism.config import ORGANISM_FORMAT

    _, folder = cache_copy
    if damage in WRONG_SHAPE_MANIFESTS:
        doc = WRONG_SHAPE_MANIFESTS[damage]
        text = "[" * 100_000 + "]" * 100_000 if doc is None else json.dumps(doc).replace('"format": 1',
                                                                                        f'"format": {ORGANISM_FORMAT}')
        (folder / "MANIFEST.json").write_text(text)
    elif damage == "flip_weight_byte":
        f = folder / "model" / "model.safetensors"
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    elif damage == "drop_manifest":
        (folder / "MANIFEST.json").unlink()
    else:
        shutil.rmtree(folder / "tokenizer")
    with pytest.raises(CacheError):
        verify(folder)


def test_damaged_cache_is_rebuilt_not_loaded(cache_copy, monkeypatch):
    root, folder = cache_copy
    (folder / "ground_truth" / "planted.jsonl").write_text("garbage")
    import memlens.organism.train as train

    rebuilt = []

    def fake_build(cfg, seed, out_dir, progress=True):
        rebuilt.append(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "marker").write_text("fresh")

    monkeypatch.setattr(train, "build_organism", fake_build)
    with pytest.warns(UserWarning, match="discarding the organism cache"):
        path = build("tiny", 0, root)
    assert rebuilt and (path / "marker").read_text() == "fresh"
    verify(path)
