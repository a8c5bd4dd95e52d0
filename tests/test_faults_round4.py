"""Reliability, round four (#43): resumes that trusted a checkpoint made with other settings, work
thrown away after the compute, duplicates counted as independent draws, and the new surfaces' bad
inputs. Each case used to give a wrong result or a traceback and now does the right thing or ends
in one clear line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import memlens as ml
from memlens import InputError, ParagraphSet, RunConfig
from memlens.core.checkpoint import Checkpoint
from memlens.testing import random_model, random_tokens

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sets(neo):
    paras = ParagraphSet.from_tokens(random_tokens(8, 24, neo.vocab_size, seed=11), prefix_len=12)
    return paras[:2], paras[2:]


# the checkpoint helper ------------------------------------------------------------------------------
def test_a_checkpoint_refuses_another_identity_and_can_start_afresh(tmp_path):
    path = tmp_path / "c.jsonl"
    ck = Checkpoint(path, "demo", {"model": "m", "settings": {"lr": 1e-3}, "seeds": [0, 1]})
    assert ck.load() == {}
    ck.append(("a", 0), {"x": 1})
    assert Checkpoint(path, "demo", {"model": "m", "settings": {"lr": 1e-3}, "seeds": (0, 1)}).load() == {("a", 0): {"x": 1}}
    with pytest.raises(InputError, match=r"other settings \(settings.lr: 0.001 -> 0.01\)"):
        Checkpoint(path, "demo", {"model": "m", "settings": {"lr": 1e-2}, "seeds": [0, 1]}).load()
    with pytest.raises(InputError, match="a checkpoint of 'demo', not of 'other'"):
        Checkpoint(path, "other", {"model": "m"}).load()
    assert Checkpoint(path, "demo", {"model": "n"}, fresh=True).load() == {}
    assert len(path.read_text().splitlines()) == 1  # started afresh: the header alone


def test_a_checkpoint_drops_a_torn_last_line_and_refuses_a_damaged_one(tmp_path):
    path = tmp_path / "c.jsonl"
    ck = Checkpoint(path, "demo", {"model": "m"})
    ck.load()
    ck.append(("a",), {"x": 1})
    ck.append(("b",), {"x": 2})
    path.write_text(path.read_text() + '{"key": ["c"], "rec')
    assert set(Checkpoint(path, "demo", {"model": "m"}).load()) == {("a",), ("b",)}
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "garbage", lines[2]]) + "\n")
    with pytest.raises(InputError, match="line 2: a damaged checkpoint line"):
        Checkpoint(path, "demo", {"model": "m"}).load()
    path.write_text('{"objective": "unlearn", "mask": "all", "trial": 0}\n')  # an older memlens's, no header
    with pytest.raises(InputError, match="no checkpoint header"):
        Checkpoint(path, "demo", {"model": "m"}).load()


# 2: compare_masks / mask_tradeoff checkpoints know what made them ------------------------------------
def test_compare_masks_refuses_to_resume_another_weight_form_or_setting(neo, sets, tmp_path):
    target, retain = sets
    ckpt = tmp_path / "runs.partial"
    ml.compare_masks(neo, target, retain, masks=("all",), steps=1, lr=1e-3, progress=False, checkpoint=ckpt)
    processed = ml.process_weights(neo)
    with pytest.raises(InputError, match=r"other settings \(model: \"random-gpt_neo\" -> \"random-gpt_neo\+processed\"\)"):
        ml.compare_masks(processed, target, retain, masks=("all",), steps=1, lr=1e-3, progress=False, checkpoint=ckpt)
    with pytest.raises(InputError, match="settings.all.steps: 1 -> 2"):
        ml.compare_masks(neo, target, retain, masks=("all",), steps=2, lr=1e-3, progress=False, checkpoint=ckpt)
    with pytest.raises(InputError, match="precision"):
        ml.compare_masks(neo, target, retain, masks=("all",), steps=1, lr=1e-3, progress=False, checkpoint=ckpt,
                         precision="bf16-mixed")
    with pytest.raises(InputError, match="targets"):
        ml.compare_masks(neo, retain[:1], retain[1:], masks=("all",), steps=1, lr=1e-3, progress=False, checkpoint=ckpt)
    fresh = ml.compare_masks(processed, target, retain, masks=("all",), steps=1, lr=1e-3, progress=False,
                             checkpoint=ckpt, fresh=True)
    again = ml.compare_masks(processed, target, retain, masks=("all",), steps=1, lr=1e-3, progress=False, checkpoint=ckpt)
    assert json.dumps(fresh.trials) == json.dumps(again.trials) and fresh.provenance.model == "random-gpt_neo+processed"


# 3: the localization benchmark's checkpoint ---------------------------------------------------------
def test_the_localization_checkpoint_refuses_other_localizers_and_paragraph_counts(neo, tmp_path):
    paras = ParagraphSet.from_tokens(random_tokens(10, 24, neo.vocab_size, seed=3), prefix_len=12)
    bench = ml.LocalizationBenchmark(neo, progress=False)
    kw = dict(memorized=paras[:2], non_memorized=paras[2:6], ratios=(0.05,), seeds=(0,), inject_steps=20,
              contrast_paragraphs=2, del_paragraphs=2, del_natural=False, checkpoint=tmp_path / "b.jsonl")
    first = bench.run(paras[6:], localizers=["random"], n_paragraphs=1, **kw)
    assert len(first.rows) == 1  # the injection recited its paragraph, so the block has its row
    with pytest.raises(InputError, match=r"localizers: \[\"random\"\] -> \[\"random\", \"activation\"\]"):
        bench.run(paras[6:], localizers=["random", "activation"], n_paragraphs=1, **kw)
    with pytest.raises(InputError, match="n_paragraphs: 1 -> 2"):
        bench.run(paras[6:], localizers=["random"], n_paragraphs=2, **kw)
    again = bench.run(paras[6:], localizers=["random"], n_paragraphs=1, **kw)
    assert again.rows == first.rows


def test_a_tampered_localization_block_is_refused_in_one_line(neo, tmp_path):
    paras = ParagraphSet.from_tokens(random_tokens(10, 24, neo.vocab_size, seed=3), prefix_len=12)
    bench = ml.LocalizationBenchmark(neo, progress=False)
    kw = dict(memorized=paras[:2], non_memorized=paras[2:6], ratios=(0.05,), seeds=(0,), inject_steps=2,
              contrast_paragraphs=2, del_paragraphs=2, del_natural=False, checkpoint=tmp_path / "b.jsonl",
              localizers=["random"], n_paragraphs=1)
    bench.run(paras[6:], **kw)
    lines = (tmp_path / "b.jsonl").read_text().splitlines()
    block = json.loads(lines[1])
    block["record"]["rows"] = [{"localizer": "random", "level": "neuron", "ratio": 0.05, "seed": 0, "seconds": 1.0,
                                "recall": "high"}]
    (tmp_path / "b.jsonl").write_text("\n".join([lines[0], json.dumps(block)]) + "\n")
    with pytest.raises(InputError, match="is damaged"):
        bench.run(paras[6:], **kw)


def test_the_localization_script_removes_its_blocks_once_the_output_is_written(tmp_path, organism, organism_cache):
    out = tmp_path / "loc.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "localization.py"), "--model", "organism-tiny", "--ratios", "0.05",
           "--seeds", "0", "--localizers", "random", "--n-paragraphs", "1", "--contrast-paragraphs", "2",
           "--del-paragraphs", "2", "--out", str(out)]
    env = dict(os.environ) | {"MEMLENS_CACHE": organism_cache, "HF_HUB_OFFLINE": "1"}
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT, env=env)
    assert out.exists() and not Path(str(out) + ".blocks").exists()


# 1: nothing computed is thrown away ----------------------------------------------------------------
def test_the_tradeoff_script_checks_add_to_before_it_computes(tmp_path):
    out = tmp_path / "fr.safetensors"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "tradeoff_frontier.py"), "--model", "organism-tiny", "--lrs", "1e-3",
           "--steps", "1", "--decays", "none", "--seeds", "0", "--trials", "1", "--out", str(out),
           "--add-to", str(tmp_path / "missing.safetensors")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode != 0 and "--add-to" in done.stderr and "no such result file" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


def test_mask_tradeoff_saves_its_result_before_removing_its_checkpoints(neo, sets, tmp_path, monkeypatch):
    target, retain = sets
    out = tmp_path / "t.safetensors"
    saved_when_removed = []
    real_unlink = Path.unlink

    def watch(self, *a, **k):
        if ".grid." in self.name:
            saved_when_removed.append(out.exists())
        return real_unlink(self, *a, **k)

    monkeypatch.setattr(Path, "unlink", watch)
    res = ml.mask_tradeoff(neo, target, retain, [1e-3], masks=("all",), steps=[1], seeds=[0], progress=False,
                           checkpoint=tmp_path / "t.grid", out=out)
    assert saved_when_removed == [True] and json.dumps(ml.MaskTradeoff.load(out).rows) == json.dumps(res.rows)


# 4: parts of a trade-off know their paragraphs -----------------------------------------------------
def test_concat_refuses_parts_unlearned_on_other_targets(neo, sets):
    target, retain = sets
    a = ml.mask_tradeoff(neo, target[:1], retain, [1e-3], masks=("all",), steps=[1], seeds=[0], progress=False)
    b = ml.mask_tradeoff(neo, target[1:], retain, [1e-2], masks=("all",), steps=[1], seeds=[0], progress=False)
    with pytest.raises(InputError, match="targets"):
        ml.MaskTradeoff.concat([a, b])
    c = ml.mask_tradeoff(neo, target[:1], retain, [1e-2], masks=("all",), steps=[1], seeds=[0], progress=False)
    assert len(ml.MaskTradeoff.concat([a, c]).rows) == 2
    assert a.provenance.config["targets"] == [target.ids[0]]


# 5: duplicates are not independent draws ------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [{"seeds": [0, 0]}, {"lrs": [1e-3, 1e-3]}, {"masks": ["all", "all"]},
                                    {"steps": [1, 1]}])
def test_mask_tradeoff_refuses_a_value_twice(neo, sets, kwargs):
    target, retain = sets
    args = {"lrs": [1e-3], "seeds": [0], "steps": [1], "masks": ["all"]} | kwargs
    with pytest.raises(InputError, match="twice"):
        ml.mask_tradeoff(neo, target, retain, args.pop("lrs"), progress=False, **args)


@pytest.mark.parametrize("kwargs", [{"seeds": (0, 0)}, {"ratios": (0.05, 0.05)}, {"localizers": ["random", "random"]}])
def test_the_localization_benchmark_refuses_a_value_twice(neo, sets, kwargs):
    target, retain = sets
    with pytest.raises(InputError, match="twice"):
        ml.LocalizationBenchmark(neo, progress=False).run(retain, memorized=target, non_memorized=retain,
                                                          **({"localizers": ["random"]} | kwargs))


@pytest.mark.parametrize("toml", ['[tradeoff]\nlrs = [0.001, 0.001]\n', '[tradeoff]\nseeds = [0, 0]\n',
                                  '[localize]\nseeds = [1, 1]\n', '[localize]\nratios = [0.01, 0.01]\n',
                                  '[localize]\nlocalizers = ["random", "random"]\n'])
def test_the_settings_refuse_a_value_twice(tmp_path, toml):
    path = tmp_path / "s.toml"
    path.write_text(toml)
    with pytest.raises(InputError, match="twice"):
        RunConfig.from_toml(path)


# 6: values that silently meant something else -------------------------------------------------------
def test_neuron_counts_must_be_counts(neo, sets):
    scores = ml.make_localizer("random", neo).run(sets[0])
    for bad in (-1, float("nan"), 0.5, True, neo.d_mlp + 1):
        with pytest.raises(InputError, match="per_layer"):
            scores.top(bad)
    assert int(scores.top(3).sum()) == 3 * neo.n_layers


def test_retain_at_and_frontier_refuse_what_they_cannot_read(neo, sets):
    target, retain = sets
    t = ml.mask_tradeoff(neo, target[:1], retain, [1e-3], masks=("all",), steps=[1], seeds=[0], progress=False)
    for bad in (float("nan"), float("inf"), "25", None):
        with pytest.raises(InputError, match="retain_at takes a target EM"):
            t.retain_at(bad)
    with pytest.raises(InputError, match="no mask 'topkk'"):
        t.frontier("topkk")


def test_inject_refuses_nan_weights_float_masks_and_bad_seeds(neo, sets):
    target, retain = sets
    params = {s.param_name: s.param for c in neo.components for s in c.slices}
    name = next(iter(params))
    with pytest.raises(InputError, match="retain_weight must be a finite number"):
        ml.inject(neo, target, components=[(1, "W_in")], retain=retain, retain_weight=float("nan"), progress=False)
    with pytest.raises(InputError, match="must be a boolean tensor"):
        ml.inject(neo, target, mask={name: torch.full_like(params[name], 0.3)}, progress=False)
    with pytest.raises(InputError, match="seed"):
        ml.inject_neurons(neo, target, 0.1, seed=2**70, progress=False)
    with pytest.raises(InputError, match="seed"):
        ml.inject_neurons(neo, target, 0.1, seed=-1, progress=False)
    with pytest.raises(InputError, match="components must be a list of component keys"):
        ml.inject(neo, target, components=(1, "W_in"), progress=False)
    with pytest.raises(InputError, match="tokens, fewer than"):
        ml.inject(neo, ["a b c"], components=[(1, "W_in")], progress=False)


# 7: a check lives where the data enters --------------------------------------------------------------
def test_a_mask_of_a_map_remembers_its_weight_form_everywhere(neo, sets):
    target, retain = sets
    raw_mask = ml.GradientMap(neo).run(target, progress=False).mask(0.01)
    assert isinstance(raw_mask, ml.WeightMask) and raw_mask.model == neo.name
    processed = ml.process_weights(neo)
    with pytest.raises(InputError, match="different weight forms"):
        ml.SparseFineTuner(processed).unlearn(target[:1], retain, mask=raw_mask, steps=1)
    with pytest.raises(InputError, match="different weight forms"):
        ml.NoiseIntervention(processed, progress=False).run(target, retain, {"topk": raw_mask}, (0.0,), draws=1)
    with pytest.raises(InputError, match="different weight forms"):
        ml.inject(processed, target, mask=raw_mask, steps=1, progress=False)
    with pytest.raises(InputError, match="must be a boolean tensor"):
        ml.SparseFineTuner(neo).unlearn(target[:1], retain, mask={n: m.float() for n, m in raw_mask.items()}, steps=1)


# 8: one line instead of a traceback -----------------------------------------------------------------
def test_the_benchmark_checks_its_arguments_before_injecting(neo, sets, monkeypatch):
    target, retain = sets
    bench = ml.LocalizationBenchmark(neo, progress=False)
    injected = []
    monkeypatch.setattr("memlens.analyses.localization.benchmark.inject_neurons", lambda *a, **k: injected.append(1))
    for kwargs, message in (({"localizers": 5}, "localizers must be a non-empty list"),
                            ({"seeds": 3}, "seeds must be a list"),
                            ({"localizers": ["random"], "localizer_settings": {"random": {"sed": 1}}},
                             "no setting\\(s\\) sed; its settings are"),
                            ({"localizers": ["random"], "localizer_settings": ["random"]}, "localizer_settings must map")):
        with pytest.raises(InputError, match=message):
            bench.run(retain, memorized=target, non_memorized=retain, **kwargs)
    with pytest.raises(InputError, match="empty paragraph pool"):
        bench.run(retain[[]], memorized=target, non_memorized=retain, localizers=["random"])
    assert not injected


def test_trade_off_arguments_of_the_wrong_kind_are_refused(neo, sets):
    target, retain = sets
    t = ml.mask_tradeoff(neo, target[:1], retain, [1e-3], masks=("all",), steps=[1], seeds=[0], progress=False)
    with pytest.raises(InputError, match="lrs must be a list"):
        ml.mask_tradeoff(neo, target, retain, 1e-3, progress=False)
    with pytest.raises(InputError, match="takes a list of MaskTradeoff parts"):
        ml.MaskTradeoff.concat(x for x in [t])
    with pytest.raises(InputError, match="part 1 is a str"):
        ml.MaskTradeoff.concat([t, "x"])


def test_a_damaged_result_breaks_neither_show_nor_the_report(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from memlens.run.cli import main

    res = ml.MaskTradeoff(rows=[{"mask": "all", "lr": 1e-3, "steps": 1, "decay": "none", "seed": 0,
                                 "target_em_after": 10.0, "retain_em_after": 40.0}])
    path = res.save(tmp_path / "t.safetensors")
    with safe_open(str(path), "pt") as f:
        doc = json.loads(f.metadata()["memlens"])
    doc["fields"]["rows"][0]["target_em_after"] = "ten"
    save_file({}, str(path), metadata={"memlens": json.dumps(doc)})
    assert main(["show", str(path)]) == 2


def test_a_bad_report_section_is_reported_and_the_rest_written(tmp_path):
    from memlens.core.io import write_json_atomic
    from memlens.run import stage as stage_module
    from memlens.run.report import write_report

    run = tmp_path / "run"
    run.mkdir()
    write_json_atomic(run / "run.json", {"model": "organism-tiny", "seed": 0, "config": {}})
    for name in ("gradients", "perturb"):
        write_json_atomic(run / f"{name}.summary.json", {"anything": 1})

    def broken(rb, parts, folder, summary):
        raise KeyError("scan")

    import dataclasses

    rows = [r for r in stage_module.stages() if r.name in ("gradients", "perturb")]

    html = write_report(run, [dataclasses.replace(rows[0], report=broken), rows[1]]).read_text()
    assert "The gradients section could not be drawn: KeyError" in html
    assert "perturb" in html  # the next section is still there


# 9: one default per setting -------------------------------------------------------------------------
def test_the_injection_defaults_are_written_once():
    import inspect

    st = ml.InjectionSettings()
    assert RunConfig().localize.inject_lr == st.lr and RunConfig().localize.inject_steps == st.steps
    assert inspect.signature(ml.inject).parameters["lr"].default is None  # None: the settings' value
    assert inspect.signature(ml.LocalizationBenchmark.run).parameters["inject_lr"].default is None
    with pytest.raises(InputError, match="lr must be a positive finite number"):
        ml.InjectionSettings(lr=math.inf)
    model = random_model("gpt_neo", seed=4)
    paras = ParagraphSet.from_tokens(random_tokens(1, 24, model.vocab_size, seed=5), prefix_len=12)
    with ml.core.model.preserved_weights(model.tl_model):
        res = ml.inject(model, paras, components=[(1, "W_in")], settings=ml.InjectionSettings(steps=2), progress=False)
    assert res.provenance.config["lr"] == st.lr and res.provenance.config["steps"] == 2


def test_a_count_column_is_checked_where_it_enters_the_duplication_profile(neo):
    from memlens.analyses.scan import ScanResult

    paras = ParagraphSet(random_tokens(3, 24, neo.vocab_size, seed=1), 12, 12, ["a", "b", "c"],
                         metadata={"count": [4, -2, 1]})
    scan = ml.scan(neo, paras, progress=False)
    assert isinstance(scan, ScanResult)
    with pytest.raises(InputError, match="paragraph 'b': count = -2 is not a count"):
        ml.duplication_profile(scan)
    fractional = ParagraphSet(paras.tokens, 12, 12, ["a", "b", "c"], metadata={"count": [4, 2.5, 1]})
    with pytest.raises(InputError, match="'b': count = 2.5"):
        ml.duplication_profile(ml.scan(neo, fractional, progress=False))


def test_a_partial_localization_table_reads_the_finished_blocks_without_touching_the_checkpoint(neo, tmp_path):
    paras = ParagraphSet.from_tokens(random_tokens(10, 24, neo.vocab_size, seed=3), prefix_len=12)
    bench = ml.LocalizationBenchmark(neo, progress=False)
    path = tmp_path / "b.jsonl"
    full = bench.run(paras[6:], memorized=paras[:2], non_memorized=paras[2:6], ratios=(0.05,), seeds=(0, 1),
                     inject_steps=20, contrast_paragraphs=2, del_paragraphs=2, del_natural=False, checkpoint=path,
                     localizers=["random", "activation"], n_paragraphs=1)
    lines = path.read_text().splitlines()
    blocks = [i for i, x in enumerate(lines[1:], 1) if len(json.loads(x)["key"]) == 3]
    last = lines[blocks[1]]
    torn = "\n".join(lines[: blocks[1]]) + "\n" + last[: len(last) // 2]  # seed 1's block cut by a kill
    path.write_text(torn)
    part = ml.LocalizationBenchmarkResult.from_checkpoint(path)
    assert path.read_text() == torn
    assert part.rows == full.rows and len(part.rows) == 4  # seed 1's localizers come from its pieces
    assert part.provenance.config["blocks"] == [["neuron", 0.05, 0]]
    assert sorted(k[3] for k in part.provenance.config["pieces"]) == ["activation", "random"]
    assert len(part.injections) == 1
    assert part.provenance.config["planned"] == [["neuron", 0.05, 0], ["neuron", 0.05, 1]]
    assert part.summary()["neuron"][0]["n_seeds"] == 2
    path.write_text(json.dumps({"format": "memlens.checkpoint", "version": 1, "kind": "compare_masks", "identity": {}}))
    with pytest.raises(InputError, match="not of 'localization'"):
        ml.LocalizationBenchmarkResult.from_checkpoint(path)


def test_the_localization_script_writes_a_partial_measurement_from_blocks(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("loc_bench", ROOT / "benchmarks" / "localization.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    neo = random_model("gpt_neo")
    paras = ParagraphSet.from_tokens(random_tokens(10, 24, neo.vocab_size, seed=3), prefix_len=12)
    blocks = tmp_path / "loc.json.blocks"
    ml.LocalizationBenchmark(neo, progress=False).run(
        paras[6:], memorized=paras[:2], non_memorized=paras[2:6], ratios=(0.05,), seeds=(0,), inject_steps=20,
        contrast_paragraphs=2, del_paragraphs=2, del_natural=False, checkpoint=blocks, localizers=["random"],
        n_paragraphs=1)
    out = tmp_path / "partial.json"
    mod.table_from(str(blocks), str(out))
    saved = json.loads(out.read_text())
    assert saved["partial"]["blocks_done"] == [["neuron", 0.05, 0]]
    assert saved["summary"]["neuron"][0]["localizer"] == "random" and len(saved["rows"]) == 1
    assert blocks.exists()
    printed = capsys.readouterr().out
    recall = saved["summary"]["neuron"][0]["recall"]
    assert f"| random | 0.05 | 1 | {recall:.3f} [" in printed  # the INJ table says how many seeds each mean has
    del_table = printed.split("DEL on the injected paragraphs")[1]
    assert f"| random | 0.05 | 1 | {saved['summary']['neuron'][0]['del_target_em_drop']:.1f} [" in del_table
    with pytest.raises(SystemExit, match="no checkpoint file"):
        mod.table_from(str(tmp_path / "missing.json.blocks"), None)


def test_an_interrupted_localization_block_resumes_after_its_last_finished_localizer(neo, tmp_path, monkeypatch):
    """A block on SmolLM2 runs for hours: a kill inside it keeps the localizers that finished
    (pieces), the resume redoes the seeded injection, reuses them, and gives the rows of an
    uninterrupted run; a piece made on another injection is computed again."""
    from memlens.analyses.localization import ActivationLocalizer, RandomLocalizer

    paras = ParagraphSet.from_tokens(random_tokens(10, 24, neo.vocab_size, seed=3), prefix_len=12)
    kw = dict(memorized=paras[:2], non_memorized=paras[2:6], ratios=(0.05,), seeds=(0,), inject_steps=20,
              contrast_paragraphs=2, del_paragraphs=2, del_natural=False, localizers=["random", "activation"],
              n_paragraphs=1)
    whole = ml.LocalizationBenchmark(neo, progress=False).run(paras[6:], **kw)
    path = tmp_path / "b.jsonl"
    real_scores = ActivationLocalizer.scores

    def killed(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ActivationLocalizer, "scores", killed)
    with pytest.raises(KeyboardInterrupt):
        ml.LocalizationBenchmark(neo, progress=False).run(paras[6:], checkpoint=path, **kw)
    monkeypatch.setattr(ActivationLocalizer, "scores", real_scores)
    calls = []
    real_random = RandomLocalizer.scores
    monkeypatch.setattr(RandomLocalizer, "scores", lambda self, *a, **k: calls.append(1) or real_random(self, *a, **k))
    partial = ml.LocalizationBenchmarkResult.from_checkpoint(path)
    assert [r["localizer"] for r in partial.rows] == ["random"] and partial.provenance.config["blocks"] == []
    resumed = ml.LocalizationBenchmark(neo, progress=False).run(paras[6:], checkpoint=path, **kw)
    assert calls == []
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in whole.rows]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.rows] == strip
    # a piece recorded for another injection is not reused
    lines = path.read_text().splitlines()
    header, piece = lines[0], next(json.loads(x) for x in lines[1:] if len(json.loads(x)["key"]) == 4)
    piece["record"]["made"]["steps"] += 1
    path.write_text(header + "\n" + json.dumps(piece) + "\n")
    again = ml.LocalizationBenchmark(neo, progress=False).run(paras[6:], checkpoint=path, **kw)
    assert calls == [1] and len(again.rows) == 2
