"""Compute precision (memlens.core.precision): fp32 unchanged, bf16-mixed computes in bfloat16 on
float32 weights, the setting reaches every analysis and command, and low-precision weights lose no
fine-tuning update."""

from __future__ import annotations

import warnings

import pytest
import torch

import memlens as ml
from memlens.core.precision import with_precision
from memlens.core.sparse import MaskedAdam
from memlens.testing import random_model, random_tokens


def _paragraphs(n: int = 6, seed: int = 0) -> ml.ParagraphSet:
    return ml.ParagraphSet(random_tokens(n, 40, seed=seed), 20, 20, [f"p{i}" for i in range(n)])


def _matmul_dtypes(model: ml.HookedModel, tokens: torch.Tensor) -> set[torch.dtype]:
    """The dtypes of every attention output (hook_z) of one forward."""
    seen: set[torch.dtype] = set()

    def keep(act, hook):
        seen.add(act.dtype)

    with model.hooks(fwd_hooks=[(f"blocks.{L}.attn.hook_z", keep) for L in range(model.n_layers)]):
        model(tokens)
    return seen


def test_fp32_calls_the_model_as_before(neo):
    tokens = random_tokens(3, 30)
    assert neo.precision == "fp32"
    with torch.no_grad():
        assert torch.equal(neo(tokens), neo.tl_model(tokens))
    assert _matmul_dtypes(neo, tokens) == {torch.float32}


def test_bf16_mixed_computes_in_bfloat16_and_returns_float32_logits(neo):
    tokens = random_tokens(3, 30)
    with torch.no_grad():
        exact = neo(tokens)
        with neo.using_precision("bf16-mixed"):
            mixed = neo(tokens)
            dtypes = _matmul_dtypes(neo, tokens)
    assert neo.precision == "fp32"
    assert mixed.dtype == torch.float32 and dtypes == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in neo.tl_model.parameters())  # the master weights stay float32
    assert not torch.equal(mixed, exact)  # it did compute otherwise...
    rel = (mixed - exact).abs().max() / exact.abs().max()
    assert rel < 0.05, rel  # ...within bfloat16's rounding
    assert (mixed.argmax(-1) == exact.argmax(-1)).float().mean() > 0.9


def test_gradients_flow_to_float32_weights_under_bf16_mixed(neo):
    tokens = random_tokens(2, 30)
    with neo.using_precision("bf16-mixed"):
        _, acts, grads = neo.capture(tokens, "blocks.0.attn.hook_z", loss_fn=lambda logits: logits.logsumexp(-1).mean())
    assert acts["blocks.0.attn.hook_z"].dtype == torch.float32 and grads["blocks.0.attn.hook_z"].dtype == torch.float32
    assert grads["blocks.0.attn.hook_z"].abs().sum() > 0


def test_an_unknown_precision_is_refused(neo):
    with pytest.raises(ml.InputError, match="precision must be fp32 or bf16-mixed"):
        neo.precision = "bf16"
    with pytest.raises(ml.InputError, match="fp32 or bf16-mixed"):
        ml.GradientMap(neo, precision="fp16")
    with pytest.raises(ml.InputError, match="fp32 or bf16-mixed"):
        ml.scan(neo, _paragraphs(), precision="half", progress=False)
    assert neo.precision == "fp32"


def test_an_analysis_computes_at_its_precision_and_puts_the_model_back(neo):
    paras = _paragraphs()
    seen: list[str] = []

    class Probe(ml.Analysis):
        def run(self, fail: bool = False):
            seen.append(self.model.precision)
            if fail:
                raise RuntimeError("boom")
            return self.model.precision

    assert Probe(neo, precision="bf16-mixed").run() == "bf16-mixed"
    with pytest.raises(RuntimeError):
        Probe(neo, precision="bf16-mixed").run(fail=True)
    assert Probe(neo).run() == "fp32" and neo.precision == "fp32" and seen == ["bf16-mixed", "bf16-mixed", "fp32"]
    gmap = ml.GradientMap(neo, precision="bf16-mixed").run(paras, progress=False)
    assert gmap.provenance.precision == "bf16-mixed" and neo.precision == "fp32"
    assert ml.GradientMap(neo).run(paras, progress=False).provenance.precision == "fp32"


def test_functions_take_precision_and_record_it(neo):
    paras = _paragraphs()
    exact = ml.scan(neo, paras, progress=False)
    mixed = ml.scan(neo, paras, precision="bf16-mixed", progress=False)
    assert exact.provenance.precision == "fp32" and mixed.provenance.precision == "bf16-mixed"
    assert neo.precision == "fp32"
    assert (exact.nll - mixed.nll).abs().max() < 0.1
    assert "precision" in str(__import__("inspect").signature(ml.compare_masks))


def test_a_result_keeps_its_precision_on_disk(neo, tmp_path):
    mixed = ml.scan(neo, _paragraphs(), precision="bf16-mixed", progress=False)
    assert ml.load_result(mixed.save(tmp_path / "s.safetensors")).provenance.precision == "bf16-mixed"


def test_with_precision_keeps_the_signature_and_refuses_a_second_precision():
    @with_precision
    def f(model, x: int, *, y: int = 1) -> int:
        """Doc."""
        return x

    assert list(__import__("inspect").signature(f).parameters) == ["model", "x", "y", "precision"]
    with pytest.raises(TypeError):
        with_precision(lambda model, precision=None: None)


def test_greedy_decoding_agrees_with_teacher_forcing_under_bf16_mixed(any_model):
    tokens = random_tokens(4, 40, seed=3)
    with any_model.using_precision("bf16-mixed"):
        decoded = ml.greedy_decode(any_model, tokens[:, :20], 20)
        forced = ml.teacher_forced_scores(any_model, torch.cat([tokens[:, :20], decoded], 1), 20)
    assert (forced.em == 20).float().mean() >= 0.75  # the model's own greedy text is recited (ties aside)


def test_masked_adam_accumulates_sub_step_updates_in_a_float32_master():
    w = torch.nn.Parameter(torch.full((64,), 0.1, dtype=torch.bfloat16))
    mask = {"w": torch.ones(64, dtype=torch.bool)}
    mask["w"][:8] = False
    opt = MaskedAdam({"w": w}, mask, lr=1e-5)
    start = w.detach().clone()
    for step in range(60):
        w.grad = torch.ones_like(w)
        opt.step()
        if step == 0:  # one step of 1e-5 is far below half a bfloat16 step at 0.1 (2.4e-4)
            assert torch.equal(w.detach(), start) and opt.rounded_away() == 56 and opt.weights_changed() == 56
    assert opt.masters["w"].dtype == torch.float32
    assert torch.equal(w.detach()[:8], start[:8])  # outside the mask: never moved
    assert (w.detach()[8:] < start[8:]).all()  # 60 updates of 1e-5 add up past half a step
    opt.rewind()
    assert torch.equal(w.detach(), start) and opt.weights_changed() == 0


def _tuner_run(model, dtype):
    model.to(dtype=dtype)
    paras = _paragraphs(12, seed=5)
    tuner = ml.SparseFineTuner(model, progress=False)
    before = {n: p.detach().clone() for n, p in tuner.params.items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = tuner.unlearn(paras[[0]], retain=paras[2:], mask="random", steps=5, lr=1e-5, fraction=0.01)
    changed = tuner.weights_changed()
    tuner.restore()
    exact = all(torch.equal(p.detach(), before[n]) for n, p in tuner.params.items())
    return res, changed, exact, [str(w.message) for w in caught]


def test_bfloat16_weights_lose_no_fine_tuning_update():
    res32, changed32, exact32, _ = _tuner_run(random_model("gpt_neo", seed=7), torch.float32)
    res16, changed16, exact16, said = _tuner_run(random_model("gpt_neo", seed=7), torch.bfloat16)
    assert res32.mask_size == res16.mask_size > 0
    assert changed32 == res32.weights_changed == res32.mask_size
    assert changed16 == res16.weights_changed == changed32  # every masked weight moved, as in float32
    assert res16.updates_rounded_away > 0 and res32.updates_rounded_away == 0  # the test exercises rounding
    assert any("master copy" in s and "bf16-mixed" in s for s in said)
    assert exact32 and exact16  # restore is bit-exact


def test_injection_into_bfloat16_weights_keeps_its_sites_and_masters():
    model = random_model("gpt_neo", seed=8).to(dtype="bfloat16")
    paras = _paragraphs(2, seed=9)
    before = {n: p.detach().clone() for n, p in model.tl_model.named_parameters()}
    with ml.core.model.preserved_weights(model.tl_model), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = ml.inject(model, paras, components=[(1, "W_in")], steps=3, lr=1e-5, progress=False)
    assert res.weights_changed == res.sites_size and res.weights_changed_outside == 0
    assert all(torch.equal(p.detach(), before[n]) for n, p in model.tl_model.named_parameters())


def test_the_learned_localizers_train_float32_gates_on_a_bfloat16_model():
    model = random_model("gpt_neo", seed=10).to(dtype="bfloat16")
    loc = ml.make_localizer("slimming", model, max_steps=3, progress=False)
    assert loc.init_params().dtype == torch.float32
    scores = loc.run(_paragraphs(2, seed=11), contrast=_paragraphs(2, seed=12))
    assert torch.isfinite(scores.neuron_scores).all() and scores.steps >= 1


def test_run_config_precision_and_its_fp32_stages():
    cfg = ml.RunConfig(precision="bf16-mixed", fp32_stages=("unlearn",))
    assert cfg.stage_precision("scan") == "bf16-mixed" and cfg.stage_precision("unlearn") == "fp32"
    assert ml.RunConfig().stage_precision("scan") == "fp32"
    back = ml.RunConfig.from_dict(cfg.to_dict())
    assert back == cfg and 'precision = "bf16-mixed"' in cfg.to_toml()
    with pytest.raises(ml.InputError, match="precision"):
        ml.RunConfig(precision="bf16")
    with pytest.raises(ml.InputError, match="fp32_stages"):
        ml.RunConfig(fp32_stages=("unlearnn",))
    with pytest.raises(ml.InputError, match="fp32_stages"):
        ml.RunConfig(fp32_stages=("scan", "scan"))
    assert ml.RunConfig().differences(cfg) == ["fp32_stages: [] -> ['unlearn']", "precision: 'fp32' -> 'bf16-mixed'"]


def test_the_command_line_takes_precision():
    from memlens.run.cli import build_parser, run_config

    args = build_parser().parse_args(["run", "--model", "organism-tiny", "--precision", "bf16-mixed"])
    assert run_config(args).precision == "bf16-mixed"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--precision", "bf16"])


def test_load_model_sets_the_precision(tmp_path):
    model = random_model("gpt_neo", seed=2)
    folder = model.save_pretrained(tmp_path / "m")
    loaded = ml.load_model(str(folder), precision="bf16-mixed")
    assert loaded.precision == "bf16-mixed"
    loaded.precision = "fp32"


def test_the_environment_sets_the_default_precision(monkeypatch):
    monkeypatch.setenv("MEMLENS_PRECISION", "bf16-mixed")
    model = random_model("gpt_neo", seed=3)
    assert model.precision == "bf16-mixed"
    model.precision = "fp32"
    monkeypatch.setenv("MEMLENS_PRECISION", "bf17")
    with pytest.raises(ml.InputError, match="MEMLENS_PRECISION"):
        random_model("gpt_neo", seed=3)


def test_a_run_records_the_precision_of_every_stage(organism, organism_cache, tmp_path):
    from memlens.run.pipeline import run_pipeline

    cfg = ml.RunConfig(model="organism-tiny", precision="bf16-mixed", fp32_stages=("gradients",))
    out = tmp_path / "run"
    run_pipeline(cfg, out, cache_dir=organism_cache, stages=["scan", "gradients", "report"], progress=False)
    import json

    manifest = json.loads((out / "run.json").read_text())
    assert manifest["config"]["precision"] == "bf16-mixed" and manifest["config"]["fp32_stages"] == ["gradients"]
    scan = json.loads((out / "scan.summary.json").read_text())
    assert scan["precision"] == "bf16-mixed" and scan["greedy_check"]["precision"] == "bf16-mixed"
    assert json.loads((out / "gradients.summary.json").read_text())["precision"] == "fp32"
    assert ml.load_result(out / "scan.safetensors").provenance.precision == "bf16-mixed"
    assert ml.load_result(out / "gradients_memorized.safetensors").provenance.precision == "fp32"
    assert "bf16-mixed (fp32 for: gradients)" in (out / "report.html").read_text()
    with pytest.raises(ml.InputError, match="precision: 'bf16-mixed' -> 'fp32'"):
        run_pipeline(ml.RunConfig(model="organism-tiny", fp32_stages=("gradients",)), out, cache_dir=organism_cache,
                     stages=["scan"], progress=False)


def test_bf16_mixed_agrees_with_fp32_on_the_tiny_organism(organism):
    """The stated tolerances of bf16-mixed on planted truth: the memorized split is the same, EM per
    paragraph agrees on >= 97% of paragraphs, NLL ranks agree (Spearman >= 0.99), and the top-0.1%
    gradient mask of the memorized set overlaps fp32's (Jaccard >= 0.5)."""
    paras = organism.ground_truth.paragraph_set()
    a = ml.scan(organism, paras, progress=False)
    b = ml.scan(organism, paras, progress=False, precision="bf16-mixed")
    assert a.split_of() == b.split_of()
    assert (a.em == b.em).float().mean() >= 0.97
    assert ml.stats.spearman(a.nll.tolist(), b.nll.tolist()) >= 0.99
    mem = a.memorized()
    ga = ml.GradientMap(organism, progress=False).run(mem).mask(0.001)
    gb = ml.GradientMap(organism, progress=False, precision="bf16-mixed").run(mem).mask(0.001)
    inter = sum(int((ga[n] & gb[n]).sum()) for n in ga)
    union = sum(int((ga[n] | gb[n]).sum()) for n in ga)
    assert inter / union >= 0.5


def test_the_weight_cast_cache_follows_weight_changes(neo):
    """Inside one bf16-mixed scope the bfloat16 weights are cast once and reused; a weight changed
    in place is cast again (a stale cast would keep the old logits)."""
    tokens = random_tokens(2, 20)
    with neo.using_precision("bf16-mixed"), torch.no_grad():
        first = neo(tokens)
        again = neo(tokens)
        assert torch.equal(first, again)
        p = next(iter(neo.components)).slices[0].param
        saved = p.detach().clone()
        p.mul_(1.5)
        try:
            changed = neo(tokens)
        finally:
            p.copy_(saved)
        assert not torch.equal(changed, first)
        assert torch.equal(neo(tokens), first)


def test_gpt_neo_attention_stays_float32_under_bf16_mixed(neo):
    """GPT-Neo does not scale its attention scores; its HuggingFace code upcasts query and key to
    keep them in float32, which autocast would undo. memlens keeps that computation in float32 in
    the bridge's model and in the decoding twin; outside autocast the original method runs."""
    attn = next(m for m in neo.hf_model.modules() if type(m).__name__ == "GPTNeoSelfAttention")
    twin_attn = next(m for m in neo.plain_model().modules() if type(m).__name__ == "GPTNeoSelfAttention")
    q, k, v = (torch.randn(1, 2, 5, 8) * 30).unbind(0)[0][None], torch.randn(1, 2, 5, 8) * 30, torch.randn(1, 2, 5, 8)
    for module in (attn, twin_attn):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, weights = module._attn(q, k, v.bfloat16())
        assert weights.dtype == torch.float32 and out.dtype == torch.bfloat16
        exact, _ = module._attn(q, k, v)
        assert torch.allclose(out.float(), exact, atol=1e-2)
