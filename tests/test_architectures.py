"""Every architecture memlens lists (docs/getting-started.md#supported-model-families), each as a
tiny random model saved with a tokenizer and loaded through ``ml.load_model(folder)`` (issue #25):
teacher-forced EM equals HuggingFace greedy generation, the component registry owns every weight
outside embeddings and norms exactly once, exact patching of one head equals a hand-patched
HuggingFace forward, and unlearning puts every weight back bit for bit."""

from __future__ import annotations

import warnings

import pytest
import torch

import memlens as ml
from memlens.analyses.patching import PatchPair, exact_patching
from memlens.core.architectures import ARCHITECTURES, architecture
from memlens.core.compat import hf_parameter_name, strip_bridge_name
from memlens.core.metrics import greedy_decode
from memlens.testing import RANDOM_ARCHS, hand_patched_nll_change, random_hf_model, random_tokens, tiny_tokenizer


def test_every_listed_architecture_is_tested_and_in_the_docs():
    from pathlib import Path

    assert set(RANDOM_ARCHS) == set(ARCHITECTURES)
    table = (Path(__file__).resolve().parents[1] / "docs" / "getting-started.md").read_text()
    for model_type in ARCHITECTURES:
        assert f"`{model_type}`" in table, model_type


@pytest.fixture(scope="module", params=RANDOM_ARCHS)
def family(request, tmp_path_factory):
    """(memlens model loaded from a saved folder, a never-booted HuggingFace copy, model type)."""
    import transformers as T

    folder = tmp_path_factory.mktemp(request.param)
    random_hf_model(request.param, seed=3).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ml.load_model(str(folder))
        reference = T.AutoModelForCausalLM.from_pretrained(folder).eval()
    reference.generation_config.eos_token_id = None  # greedy decoding of all 20 tokens, not up to an end token
    return model, reference, request.param


@torch.no_grad()
def test_em_equals_huggingface_greedy_generation(family):
    model, hf, _ = family
    prefixes = random_tokens(4, 20, model.vocab_size, seed=11)
    greedy = hf.generate(prefixes, attention_mask=torch.ones_like(prefixes), max_new_tokens=20, do_sample=False,
                         pad_token_id=0)[:, 20:]
    continuations = greedy.clone()
    breaks = [20, 0, 7, 15]  # paragraph i follows greedy decoding for its first breaks[i] tokens
    for i, b in enumerate(breaks):
        if b < 20:
            continuations[i, b] = (greedy[i, b] + 1) % model.vocab_size
    paras = ml.ParagraphSet.from_tokens(torch.cat([prefixes, continuations], 1), prefix_len=20)
    assert ml.scan(model, paras, progress=False).em.tolist() == breaks


def test_registry_owns_every_weight_outside_embeddings_and_norms_once(family):
    model, _, model_type = family
    arch = architecture(model_type)
    cover = {}
    for comp in model.components:
        for s in comp.slices:
            counter = cover.setdefault(s.param_name, torch.zeros(s.param.shape, dtype=torch.int32))
            cover.setdefault(("seen", s.param_name), set())
            if s.identity in cover[("seen", s.param_name)]:
                continue  # a key/value slice shared by the query heads of its group: owned once
            cover[("seen", s.param_name)].add(s.identity)
            s.of(counter).add_(1)
    for name, p in model.named_parameters().items():
        plain = strip_bridge_name(name)
        if p.ndim != 2 or any(w in plain for w in ("embed", "wte", "wpe", "norm", "ln_", "lm_head", "embed_out")):
            continue
        if (arch.fused_qkv and ".qkv." in plain) or (arch.fused_mlp and ".gate_up_proj." in plain):
            continue  # the bridge's fused copy; its forward uses the split q/k/v (gate/up) the registry owns
        assert plain in cover, f"{model_type}: {plain} is owned by no component"
        assert torch.equal(cover[plain], torch.ones_like(cover[plain])), f"{model_type}: {plain} not owned exactly once"


@torch.no_grad()
def test_patching_one_head_equals_a_hand_patched_huggingface_forward(family):
    model, hf, model_type = family
    toks = random_tokens(1, 11, model.vocab_size, seed=5)[0]
    corrupt = toks[:10].clone()
    corrupt[3] = (corrupt[3] + 7) % model.vocab_size
    pair = PatchPair("p", toks[:10].clone(), corrupt, int(toks[10]), 0)
    layer, head = model.n_layers - 1, 1
    res = exact_patching(model, pair, kinds=("z",))
    module = hf.get_submodule(hf_parameter_name(architecture(model_type).o.format(layer=layer)).removesuffix(".weight"))
    assert float(res.noising[layer, 0, head]) == pytest.approx(
        hand_patched_nll_change(hf, module, pair, head, model.d_head), abs=2e-4)


def test_unlearning_puts_every_weight_back_bit_for_bit(family):
    model, _, _ = family
    before = {n: p.detach().clone() for n, p in model.named_parameters().items()}
    paras = ml.ParagraphSet.from_tokens(random_tokens(3, 40, model.vocab_size, seed=2), prefix_len=20)
    ft = ml.SparseFineTuner(model, progress=False)
    with ft.restored():
        ft.unlearn(paras[[0]], paras[[1, 2]], mask="topk", fraction=0.05, steps=2, lr=1e-2)
        assert ft.weights_changed() > 0
        # greedy decoding (in the plain twin, fused weights synced back) follows the changed weights
        prefixes = paras.prefixes[:, :20]
        decoded = greedy_decode(model, prefixes, 10)
        again = ml.ParagraphSet.from_tokens(torch.cat([prefixes, decoded.cpu()], 1), prefix_len=20)
        assert ml.scan(model, again, progress=False).em.tolist() == [10, 10, 10]
    for n, p in model.named_parameters().items():
        assert torch.equal(p.detach(), before[n]), n


def test_models_without_a_registry_run_every_analysis_that_needs_none(monkeypatch):
    """A model type the bridge boots but memlens has no registry row for (here Phi-3 with its row
    taken out) loads; scan, perturbation, patching and attention views run; only the analyses
    that need the registry refuse, saying why."""
    from memlens.analyses.attention_views import head_attention_views

    arch = "phi3"
    monkeypatch.delitem(ARCHITECTURES, arch)
    model = ml.HookedModel.from_hf(random_hf_model(arch, seed=3), tiny_tokenizer(), name=f"random-{arch}")
    paras = ml.ParagraphSet.from_tokens(random_tokens(3, 40, model.vocab_size, seed=2), prefix_len=20)
    with torch.no_grad():
        hf_logits = random_hf_model(arch, seed=3)(paras.tokens).logits
    torch.testing.assert_close(model(paras.tokens), hf_logits, atol=1e-4, rtol=1e-4)
    assert len(ml.scan(model, paras, progress=False).em) == 3
    sweep = ml.PrefixPerturber(model, progress=False).sweep(paras, n_samples=1)
    assert sweep.em_drop.numel() == 3 * 20  # every prefix position of every paragraph
    toks = random_tokens(1, 11, model.vocab_size, seed=5)[0]
    corrupt = toks[:10].clone()
    corrupt[3] = (corrupt[3] + 7) % model.vocab_size
    res = exact_patching(model, PatchPair("p", toks[:10].clone(), corrupt, int(toks[10]), 0), kinds=("z",))
    assert res.noising.shape == (model.n_layers, 1, model.n_heads) and res.noising.abs().max() > 0
    assert len(head_attention_views(model, paras, 0, 1, max_paragraphs=2)) == 2
    for needs_registry in (lambda: ml.GradientMap(model).compute(paras),
                           lambda: ml.SparseFineTuner(model, progress=False).unlearn(paras[[0]], paras[[1, 2]])):
        with pytest.raises(ml.ModelLoadError, match=f"model type '{arch}' has no component registry"):
            needs_registry()


def test_a_model_the_bridge_cannot_boot_says_so():
    import transformers as T

    cfg = T.FalconConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    with pytest.raises(ml.ModelLoadError, match="cannot boot model type 'falcon'"):
        ml.HookedModel.from_hf(T.AutoModelForCausalLM.from_config(cfg), tiny_tokenizer())
