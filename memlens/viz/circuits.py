"""circuitsvis views rendered offline.

circuitsvis's own ``str(view)`` loads its JavaScript from a CDN; here its browser bundle (shipped
in the wheel as ``dist/cdn/iife.js``) is inlined once per page and every view is a closed
``<div>`` plus a call to ``CircuitsVis.render``. Token strings are HTML-escaped (circuitsvis
inserts them as HTML) and props are JSON with ``<``, ``>``, ``&`` escaped, so no token can close
a script or inject markup.
"""

from __future__ import annotations

import html
import json
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from jaxtyping import Float
from torch import Tensor

from memlens.core.errors import InputError
from memlens.core.io import write_text_atomic


@lru_cache(maxsize=1)
def circuitsvis_bundle() -> str:
    """The circuitsvis browser bundle (React included), safe to inline in a ``<script>``."""
    try:
        import circuitsvis
    except ImportError as e:
        raise InputError("circuitsvis views need the viz extra: pip install 'memlens[viz]'") from e
    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    if not path.exists():
        raise InputError(f"the circuitsvis wheel has no browser bundle at {path}; reinstall circuitsvis==1.43.*")
    return path.read_text(encoding="utf-8").replace("</script", "<\\/script")


def bundle_script() -> str:
    """``<script>`` defining ``window.CircuitsVis``; put it once per page, before any view."""
    return f'<script data-memlens="circuitsvis">{circuitsvis_bundle()}</script>'


def safe_tokens(tokens: Sequence[str]) -> list[str]:
    """Tokens for circuitsvis components that insert them as HTML (``ColoredTokens``):
    HTML-escaped."""
    return [html.escape(t, quote=True) for t in tokens]


def _json_for_script(obj: Any) -> str:
    return json.dumps(obj).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@dataclass
class CircuitsView:
    """One circuitsvis component with its props; ``fragment()`` is the HTML to place in a page
    that already holds :func:`bundle_script`; ``page()`` / ``save()`` make a standalone page."""

    component: str
    props: dict[str, Any]
    title: str = ""
    caption: str = ""
    div_id: str = field(default_factory=lambda: "cv-" + uuid.uuid4().hex[:12])

    def fragment(self) -> str:
        head = f"<h4>{html.escape(self.title)}</h4>" if self.title else ""
        cap = f'<p class="guide">{html.escape(self.caption)}</p>' if self.caption else ""
        # rendered once window.CircuitsVis exists: the bundle may come in an earlier output of the page
        return (
            f'{head}{cap}<div id="{self.div_id}" class="memlens-cv" data-component="{self.component}"></div>\n'
            f"<script>(function draw(){{if(!window.CircuitsVis){{return setTimeout(draw, 50);}}"
            f"CircuitsVis.render({json.dumps(self.div_id)}, CircuitsVis.{self.component}, "
            f"{_json_for_script(self.props)});}})();</script>"
        )

    def page(self) -> str:
        return standalone_page(self.title or self.component, [self])

    def save(self, path: str | Path) -> None:
        write_text_atomic(Path(path), self.page())

    def _repr_html_(self) -> str:
        return notebook_html([self])


class ViewList(list):
    """A list of :class:`CircuitsView` that a notebook shows as the views themselves (not as a
    list's text); ``page()`` / ``save()`` make one standalone page of them."""

    def page(self, title: str = "memlens views") -> str:
        return standalone_page(title, self)

    def save(self, path: str | Path, title: str = "memlens views") -> None:
        write_text_atomic(Path(path), self.page(title))

    def _repr_html_(self) -> str:
        return notebook_html(self)


_BUNDLE_SHOWN = {"done": False}


def notebook_html(views: Sequence[CircuitsView]) -> str:
    """The HTML a notebook shows for ``views``: the circuitsvis bundle (about 1.3 MB) only with
    the first views this Python session shows, every later output only its views (each draws
    once the page has ``window.CircuitsVis``). :func:`reset_notebook_bundle` sends it again (a
    fresh page)."""
    body = "\n".join(v.fragment() for v in views)
    if _BUNDLE_SHOWN["done"]:
        return body
    _BUNDLE_SHOWN["done"] = True
    return bundle_script() + "\n" + body


def reset_notebook_bundle() -> None:
    """Make the next notebook output carry the circuitsvis bundle again (after the page was
    reloaded without the output that held it)."""
    _BUNDLE_SHOWN["done"] = False


def standalone_page(title: str, views: Sequence[CircuitsView]) -> str:
    """A self-contained offline HTML page holding ``views`` (the bundle inlined once)."""
    body = "\n".join(v.fragment() for v in views)
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>'
            f"<body>{bundle_script()}\n{body}</body></html>\n")


def attention_heads_view(
    tokens: Sequence[str], attention: Float[Tensor, "head dest src"] | Sequence, head_names: Sequence[str],
    title: str = "", caption: str = "",
) -> CircuitsView:
    """``AttentionHeads``: one thumbnail per head (``attention [head, dest, src]``); clicking a
    thumbnail shows that head full size. It draws token labels on a canvas, so they are passed as
    they are (escaping them would show ``&quot;``); the JSON of the props is script-safe."""
    return CircuitsView("AttentionHeads", {"attention": _as_list(attention), "tokens": list(tokens),
                                           "attentionHeadNames": list(head_names), "maskUpperTri": True},
                        title, caption)


def colored_tokens_view(
    tokens: Sequence[str], values: Sequence[float] | Sequence[int] | Tensor, title: str = "", caption: str = "",
    min_value: float | None = None, max_value: float | None = None,
) -> CircuitsView:
    """``ColoredTokens``: every token shaded by its value."""
    values = [float(v) for v in _as_list(values)]
    if len(values) != len(tokens):
        raise InputError(f"colored tokens: {len(tokens)} tokens but {len(values)} values")
    props: dict[str, Any] = {"tokens": safe_tokens(tokens), "values": values}
    if min_value is not None:
        props["minValue"] = min_value
    if max_value is not None:
        props["maxValue"] = max_value
    return CircuitsView("ColoredTokens", props, title, caption)


def _as_list(x: Any) -> list:
    return x.tolist() if hasattr(x, "tolist") else list(x)
