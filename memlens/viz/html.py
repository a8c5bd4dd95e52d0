"""HTML building blocks of the offline report: the page (plotly.js and the circuitsvis bundle
inlined once each), tables, figures with a reading guide, and the guard against invisible
characters in user-supplied ids and tokens."""

from __future__ import annotations

import html
import re
from typing import Any

from memlens.viz.circuits import bundle_script

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1150px;margin:0 auto;padding:1em 2em;color:#222}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.guide{color:#555;font-style:italic;margin:.2em 0 1em}.missing{color:#a33}.figure{margin:1em 0}
nav a{margin-right:1em}
"""


# Characters that change how the text around them is shown without being seen: C0/C1 controls
# (tab and line breaks aside), bidirectional overrides, embeddings, isolates and marks, and the
# JavaScript line separators. Paragraph ids and tokens come from users' files.
_INVISIBLE = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_INVISIBLE_RAW = re.compile(f"[{_INVISIBLE}]")
# the same characters as JSON / JavaScript string escapes (\\u202e) inside figure and view data,
# unless the backslash is itself escaped
_INVISIBLE_ESCAPED = re.compile(
    r"(?<!\\)((?:\\\\)*)\\u(00[01][0-9a-fA-F]|007[fF]|00[89][0-9a-fA-F]|061[cC]|200[eEfF]|"
    r"202[89a-eA-E]|206[6-9])")


def show_invisible(text: str) -> str:
    """``text`` with every invisible control or bidirectional character, raw or as a JSON
    ``\\uXXXX`` escape, replaced by a visible ``⟨U+XXXX⟩``, so that a paragraph id cannot
    reorder or hide the report's text."""
    def escaped(m: re.Match[str]) -> str:
        code = int(m.group(2), 16)
        keep = code in (0x09, 0x0A, 0x0D)
        return m.group(0) if keep else f"{m.group(1)}⟨U+{code:04X}⟩"

    text = _INVISIBLE_RAW.sub(lambda m: f"⟨U+{ord(m.group()):04X}⟩", text)
    return _INVISIBLE_ESCAPED.sub(escaped, text)


def _plotly_script() -> str:
    from plotly.offline import get_plotlyjs

    js = get_plotlyjs().replace("</script", "<\\/script")
    return f'<script data-memlens="plotly">{js}</script>'


class ReportBuilder:
    """Collects sections; :meth:`html` renders the page."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.sections: list[tuple[str, str, list[str]]] = []
        self._n = 0

    def section(self, key: str, title: str) -> list[str]:
        parts: list[str] = []
        self.sections.append((key, title, parts))
        return parts

    def figure(self, fig: Any, guide: str) -> str:
        self._n += 1
        body = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{self._n}",
                           config={"displaylogo": False, "responsive": True})
        return f'<div class="figure plotly-figure">{body}<p class="guide">{html.escape(guide)}</p></div>'

    def html(self) -> str:
        nav = " ".join(f'<a href="#{k}">{html.escape(t)}</a>' for k, t, _ in self.sections)
        body = "\n".join(f'<section id="{k}"><h2>{html.escape(t)}</h2>\n' + "\n".join(p) + "</section>"
                         for k, t, p in self.sections)
        title = show_invisible(html.escape(self.title))
        return (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{title}</title>'
                f"<style>{CSS}</style>{_plotly_script()}{bundle_script()}</head>\n"
                f"<body><h1>{title}</h1><nav>{nav}</nav>\n{show_invisible(body)}\n</body></html>\n")


def table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """An HTML table of ``rows`` (values escaped; floats to 3 significant digits)."""
    if not rows:
        return "<p>(empty)</p>"
    columns = columns or list(rows[0])

    def fmt(v: Any) -> str:
        if v is None or (isinstance(v, float) and v != v):
            return ""
        if isinstance(v, float):
            return f"{v:.3g}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{fmt(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
