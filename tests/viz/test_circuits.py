from __future__ import annotations

import json
import re

import pytest

from memlens import InputError
from memlens.viz.circuits import attention_heads_view, colored_tokens_view, standalone_page


def test_tokens_cannot_break_the_page():
    evil = ["</script><script>alert(1)</script>", "<b>bold</b>", "a & b"]
    view = colored_tokens_view(evil, [0.1, 0.5, 0.9])
    frag = view.fragment()
    assert "</script><script>alert" not in frag
    assert frag.count("<script>") == 1 and frag.count("</script>") == 1
    props = json.loads(re.search(r"ColoredTokens, (.*)\);}\)\(\);</script>", frag).group(1))
    assert props["tokens"][1] == "&lt;b&gt;bold&lt;/b&gt;"  # escaped: circuitsvis inserts tokens as HTML


def test_every_view_has_a_closed_div_and_the_bundle_is_inlined_once():
    views = [attention_heads_view(["a", "b"], [[[1, 0], [0.5, 0.5]]], ["L0H0"]),
             colored_tokens_view(["a", "b"], [0, 1])]
    page = standalone_page("t", views)
    assert page.count('data-memlens="circuitsvis"') == 1
    for v in views:
        assert f'<div id="{v.div_id}" class="memlens-cv" data-component="{v.component}"></div>' in page
    assert "unpkg.com" not in page and "cdn.jsdelivr" not in page
    # the bundle itself must not close the script element early
    bundle = page.split('data-memlens="circuitsvis">', 1)[1]
    assert bundle.index("</script>") > 1_000_000


def test_colored_tokens_length_mismatch():
    with pytest.raises(InputError, match="2 tokens but 3 values"):
        colored_tokens_view(["a", "b"], [1, 2, 3])


def test_save_writes_a_page(tmp_path):
    path = tmp_path / "v.html"
    colored_tokens_view(["x"], [1.0], title="one").save(path)
    assert path.read_text().startswith("<!doctype html>")


def test_canvas_token_labels_are_not_escaped_twice():
    """AttentionHeads draws labels on a canvas: escaping them would show &quot; literally."""
    toks = ['say "hi"', "</script>"]
    view = attention_heads_view(toks, [[[1, 0], [0.5, 0.5]]], ["L0H0"])
    props = json.loads(re.search(r"AttentionHeads, (.*)\);}\)\(\);</script>", view.fragment()).group(1))
    assert props["tokens"] == toks
    assert "</script>" not in view.fragment().split("<script>", 1)[1].rsplit("</script>", 1)[0]
