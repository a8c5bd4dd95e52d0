"""The frictions a researcher hit in a notebook (issue #25), each fixed: texts straight into scan,
``skip_short`` in ``from_texts``, the top head's attention view without passing anything again,
views that render as HTML with the circuitsvis bundle once per page, ``wrap(bridge, tokenizer)``,
an empty target set, progress bars without ipywidgets, any ordered split thresholds, and a folder
whose tokenizer transformers rebuilds differently."""

from __future__ import annotations

import io
import sys
import warnings

import pytest

import memlens as ml
from memlens import InputError, ParagraphSet
from memlens.testing import random_hf_model, random_tokens, tiny_tokenizer

TEXT = "the quick brown fox jumps over the lazy dog while the cat sleeps " * 12


def test_from_texts_takes_skip_short_and_refuses_unknown_keywords(neo):
    with pytest.warns(UserWarning, match="skipped 1 paragraph"):
        ps = ParagraphSet.from_texts([TEXT, "too short", TEXT], neo, skip_short=True, source=["a", "b", "c"])
    assert len(ps) == 2 and ps.skipped == ["1"] and ps.metadata["source"] == ["a", "c"]
    with pytest.raises(InputError, match=r"from_texts got skip_shrot=True: an unknown keyword argument"):
        ParagraphSet.from_texts([TEXT], neo, skip_shrot=True)
    with pytest.raises(InputError, match="a list of texts, got one string"):
        ParagraphSet.from_texts(TEXT, neo)


def test_scan_takes_texts_as_the_error_recommended(neo):
    res = ml.scan(neo, [TEXT, TEXT + " again"], progress=False)
    assert res.paragraphs.tokens.shape == (2, 100)


@pytest.fixture(scope="module")
def report(neo):
    mem = ParagraphSet.from_tokens(random_tokens(3, 40, neo.vocab_size, seed=4), prefix_len=20)
    return ml.HeadLocalizer(neo, progress=False).localize(mem, evidence=("gradient", "activation_gradient"),
                                                          combine=("gradient", "activation_gradient")), mem


def test_the_top_heads_attention_view_needs_nothing_passed_again(neo, report, tmp_path):
    rep, mem = report
    top = rep.top(2)
    views = rep.attention_view()
    assert isinstance(views, ml.viz.circuits.ViewList) and len(views) == 2
    layer, head = int(top.iloc[0]["layer"]), int(top.iloc[0]["head"])
    assert f"L{layer}H{head}" in views[1].title
    second = rep.attention_view(k=2)
    assert f"L{int(top.iloc[1]['layer'])}H{int(top.iloc[1]['head'])}" in second[1].title
    explicit = rep.attention_view(neo, mem, 0, 3)  # the old call still works
    assert "L0H3" in explicit[1].title
    rep.save(tmp_path / "heads.safetensors")
    loaded = ml.HeadReport.load(tmp_path / "heads.safetensors")
    with pytest.raises(InputError, match="pass attention_view\\(model, paragraphs\\)"):
        loaded.attention_view()
    assert "L0H1" in loaded.attention_view(neo, mem, 0, 1)[1].title
    with pytest.raises(InputError, match="k must be from 1"):
        rep.attention_view(k=0)


def test_views_render_as_html_with_the_bundle_once_per_page(neo):
    from memlens.analyses.attention_views import head_attention_views
    from memlens.viz import circuits

    paras = ParagraphSet.from_tokens(random_tokens(16, 60, neo.vocab_size, seed=6), prefix_len=50)
    views = head_attention_views(neo, paras, 0, 1, max_paragraphs=16)
    circuits.reset_notebook_bundle()
    first, second = views._repr_html_(), views._repr_html_()
    marker = 'data-memlens="circuitsvis"'
    assert first.count(marker) == 1 and marker not in second  # the bundle once per page
    assert len(second.encode()) < 200_000, len(second.encode())  # 16 paragraphs' views without the bundle
    assert second.count('class="memlens-cv"') == 16 and "if(!window.CircuitsVis)" in second
    assert views[0]._repr_html_().count(marker) == 0
    page = views.page()
    assert page.count(marker) == 1 and page.count('class="memlens-cv"') == 16


def test_wrap_takes_the_tokenizer_positionally(neo):
    tok = tiny_tokenizer()
    wrapped = ml.HookedModel.wrap(neo.tl_model, tok)
    assert wrapped.tokenizer is tok


def test_unlearning_an_empty_target_set_says_so(neo):
    paras = ParagraphSet.from_tokens(random_tokens(3, 40, neo.vocab_size, seed=2), prefix_len=20)
    with pytest.raises(InputError, match="no target paragraphs"):
        ml.SparseFineTuner(neo, progress=False).unlearn(paras[:0], paras)


def test_progress_bars_do_not_need_ipywidgets(monkeypatch):
    from tqdm.std import tqdm as plain

    from memlens.core.progress import choose_tqdm

    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # not installed
    assert choose_tqdm() is plain
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no TqdmWarning about IProgress
        for _ in choose_tqdm()(range(3), disable=False, file=io.StringIO()):
            pass


def test_any_ordered_split_thresholds(neo):
    paras = ParagraphSet.from_tokens(random_tokens(4, 40, neo.vocab_size, seed=9), prefix_len=20)
    everything = ml.scan(neo, paras, memorized_min_em=0, progress=False)
    assert len(everything.memorized()) == 4 and len(everything.non_memorized()) == 0
    assert everything.non_memorized_max_em == -1
    assert len(ml.scan(neo, paras, non_memorized_max_em=-1, memorized_min_em=5, progress=False).non_memorized()) == 0
    with pytest.raises(InputError, match="thresholds must satisfy"):
        ml.scan(neo, paras, non_memorized_max_em=5, memorized_min_em=5, progress=False)


def test_a_tokenizer_that_transformers_rebuilds_differently_is_detected(tmp_path, monkeypatch):
    import transformers

    from memlens.loading import load_tokenizer

    random_hf_model("qwen2").save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    saved_ids = tiny_tokenizer()(TEXT, add_special_tokens=False)["input_ids"]
    assert load_tokenizer(tmp_path)(TEXT, add_special_tokens=False)["input_ids"] == saved_ids  # same: kept quietly
    other = tiny_tokenizer(300)  # what a family's own tokenizer class makes of the saved files, in effect
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", classmethod(lambda cls, *a, **k: other))
    with pytest.warns(UserWarning, match="tokenizes text differently from the folder's saved tokenizer.json"):
        tok = load_tokenizer(tmp_path)
    assert tok(TEXT, add_special_tokens=False)["input_ids"] == saved_ids
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ml.load_model(str(tmp_path))
    assert model.to_tokens(TEXT)[0].tolist() == saved_ids
