"""The offline HTML report of a run folder: every section built from the files the stages wrote.

plotly.js and the circuitsvis bundle are inlined once each; nothing is fetched from any host.
Every figure carries a one-line reading guide.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any, Callable

from memlens.io import read_json, write_text_atomic
from memlens.pipeline import read_stage_summary
from memlens.viz.circuits import CircuitsView, bundle_script

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


def _missing(stage: str, folder: Path, summary: dict[str, Any] | None) -> str | None:
    if summary is None:
        return (f'<p class="missing">Stage <code>{stage}</code> has no results in this folder; run '
                f"<code>memlens {stage} --out {html.escape(str(folder))}</code>.</p>")
    if "skipped" in summary:
        return f'<p class="missing">Stage <code>{stage}</code> was skipped: {html.escape(summary["skipped"])}.</p>'
    return None


def _load(folder: Path, name: str, stage: str = "run") -> Any:
    """A JSON file of the run folder (None if absent); a damaged one says which stage to redo."""
    path = folder / name
    return read_json(path, f"delete it and run `memlens {stage} --out {folder}` again") if path.exists() else None


def _views(folder: Path, name: str, stage: str) -> list[str]:
    data = _load(folder, name, stage) or []
    return [CircuitsView(v["component"], v["props"], v.get("title", ""), v.get("caption", "")).fragment() for v in data]


def write_report(folder: str | Path) -> Path:
    """Build ``report.html`` in the run folder from its stage results; returns its path."""
    folder = Path(folder)
    run = _load(folder, "run.json") or {}
    rb = ReportBuilder(f"memlens report: {run.get('model', folder.name)}")
    for key, title, fn in SECTIONS:
        parts = rb.section(key, title)
        if key == "run":
            fn(rb, parts, folder, run)
            continue
        summary = read_stage_summary(folder, key)
        if (missing := _missing(key, folder, summary)) is not None:
            parts.append(missing)
        else:
            fn(rb, parts, folder, summary)
    out = folder / "report.html"
    write_text_atomic(out, rb.html())
    return out


def _what_was_run(rb: ReportBuilder, parts: list[str], folder: Path, run: dict[str, Any]) -> None:
    summary = _load(folder, "summary.json") or {}
    para = run.get("paragraphs")
    rows = [{"item": "model", "value": run.get("model")},
            {"item": "paragraphs", "value": para["path"] if para else "the organism's ground-truth set"},
            {"item": "seed", "value": run.get("seed")}, {"item": "started", "value": run.get("started")}]
    rows += [{"item": k, "value": v} for k, v in (run.get("versions") or {}).items()]
    rows += [{"item": f"seconds: {k}", "value": v} for k, v in (summary.get("seconds") or {}).items()]
    rows.append({"item": "torch threads", "value": summary.get("torch_threads")})
    parts.append(table(rows))
    org = (read_stage_summary(folder, "scan") or {}).get("organism")
    if org:
        parts.append("<h3>Organism</h3>" + table([{"item": k, "value": json.dumps(v) if isinstance(v, (dict, list)) else v}
                                                  for k, v in org.items()]))


def _scan(rb: ReportBuilder, parts: list[str], folder: Path, s: dict[str, Any]) -> None:
    import plotly.graph_objects as go

    from memlens.scan import ScanResult

    sc = s["scan"]
    parts.append(table([{"split": k, **sc[k]} for k in ("memorized", "partly", "non_memorized")]))
    result = ScanResult.load(folder / "scan.safetensors")
    parts.append(rb.figure(result.plot(), "EM = tokens of the 50-token continuation reproduced exactly by greedy decoding; "
                                          "memorized paragraphs pile up at the right edge."))
    df = result.to_dataframe()
    if "copies" in df.columns:
        import pandas as pd

        df["copies"] = pd.to_numeric(df["copies"], errors="coerce")  # a user's file may hold anything there
        df = df.dropna(subset=["copies"])
    if "copies" in df.columns and len(df):
        df["copies"] = df["copies"].astype(int) if (df["copies"] % 1 == 0).all() else df["copies"]
        groups = df.groupby("group", sort=False) if "group" in df.columns else [("paragraphs", df)]
        fig = go.Figure()
        for group, g in groups:
            fig.add_trace(go.Box(x=g["copies"].astype(str), y=g["em"], name=str(group), boxpoints="all", jitter=0.3))
        order = [str(c) for c in sorted(df["copies"].unique())]
        fig.update_layout(title="EM vs duplication count", xaxis_title="copies in the training stream (0 = held out)",
                          yaxis_title="exact match (tokens)", xaxis={"categoryorder": "array", "categoryarray": order})
        rho = s.get("ground_truth", {}).get("spearman_em_vs_copies")
        if rho is None:
            from memlens.stats import spearman

            rho = round(spearman(df["copies"].tolist(), df["em"].tolist()), 3)
        parts.append(rb.figure(fig, f"Each point is a paragraph; a model memorizes what it saw often "
                                    f"(Spearman EM vs copies {rho})."))


def _gradients(rb: ReportBuilder, parts: list[str], folder: Path, s: dict[str, Any]) -> None:
    from memlens.gradients import GradientMapResult
    from memlens.viz.gradients import plot_layer_profiles

    maps = {n: GradientMapResult.load(folder / f"gradients_{n}.safetensors") for n in ("memorized", "non_memorized")}
    cmp = s["memorized_vs_non_memorized"]
    parts.append(table([{"set": label.replace("_", "-"), "total gradient": cmp["total"][label],
                         "share in the lower half of the layers": cmp["lower_half_share"][label]}
                        for label in cmp["labels"]]))
    parts.append(rb.figure(plot_layer_profiles(list(maps.values()), ["memorized", "non-memorized"]),
                           "Share of the total gradient per layer: the paper finds memorized paragraphs' gradients "
                           "relatively larger in lower layers."))
    for name, gm in maps.items():
        parts.append(rb.figure(gm.plot(title=f"Gradient map, {name.replace('_', '-')} paragraphs"),
                               "Each cell is one component (head matrix or MLP) of one layer; brighter = larger "
                               "max |dNLL/dW|."))


def _heads(rb: ReportBuilder, parts: list[str], folder: Path, s: dict[str, Any]) -> None:
    from memlens.heads import HeadReport

    report = HeadReport.load(folder / "heads.safetensors")
    df = report.to_dataframe().head(10)
    cols = ["layer", "head", "combined_rank", *report.evidence] + (["ablation_em_drop"] if "ablation_em_drop" in df else [])
    parts.append(table(df[cols].to_dict(orient="records"), cols))
    parts.append('<p class="guide">One row per head, most implicated first; each evidence column is larger = more '
                 "implicated; the combined rank weighs patching (causal) as much as the other kinds together.</p>")
    if "ablation_top_head" in s:
        a = s["ablation_top_head"]
        parts.append(f"<p>Causal check: zero-ablating L{a['layer']}H{a['head']} costs the memorized paragraphs "
                     f"{a['em_drop']} EM tokens, the most of any head; its ranks: {html.escape(json.dumps(a['ranks']))}.</p>")
    if report.agreement:
        parts.append("<p>Attribution vs exact patching (Spearman over heads): "
                     + html.escape(", ".join(f"{k} {v:.2f}" for k, v in report.agreement.items())) + "</p>")
    for note in report.notes:
        parts.append(f'<p class="guide">Note: {html.escape(note)}</p>')
    parts.append(rb.figure(report.plot_all(), "Layer x head heatmaps, one per evidence kind, each scaled to [0, 1]: "
                                              "bright cells are the heads that kind implicates."))
    if report.rare is not None:
        top = report.top(1).iloc[0]
        parts.append(rb.figure(report.rare.plot(int(top["layer"]), int(top["head"])),
                               "Attention from the first continuation token by prefix-token rarity rank: a falling "
                               "curve (negative Kendall tau) means the head attends to rare tokens."))
    parts.extend(_views(folder, "head_views.json", "heads"))


def _perturb(rb: ReportBuilder, parts: list[str], folder: Path, s: dict[str, Any]) -> None:
    from memlens.perturb import PerturbationResult

    mem = PerturbationResult.load(folder / "perturbation_memorized.safetensors")
    non = PerturbationResult.load(folder / "perturbation_non_memorized.safetensors")
    parts.append(table([{"set": "memorized", "mean EM drop": s["mean_em_drop_memorized"]},
                        {"set": "non-memorized", "mean EM drop": s["mean_em_drop_non_memorized"]}]))
    parts.append(rb.figure(mem.plot(non, labels=("memorized", "non-memorized")),
                           "Mean EM lost when the token at one prefix position is replaced by a random token; "
                           "memorized paragraphs resist most positions."))
    parts.append(rb.figure(mem.plot_distribution(non), "Distribution of EM drops over all perturbations of each set."))
    parts.extend(_views(folder, "perturb_views.json", "perturb"))


def _unlearn(rb: ReportBuilder, parts: list[str], folder: Path, s: dict[str, Any]) -> None:
    from memlens.mask_comparison import MaskComparison

    rows = s["table"]
    cols = [c for c in ("objective", "mask", "mask_size", "weights_changed", "target_em_before", "target_em_after",
                        "other_memorized_em_after", "retain_em_before", "retain_em_after", "retain_top1_changed",
                        "target_em_new_after",
                        "target_edit_success") if c in rows[0]]
    parts.append(table(rows, cols))
    how = "; ".join(f'{k}: {v["steps"]} Adam steps at lr {v["lr"]}' for k, v in s["settings"].items())
    parts.append(f'<p class="guide">Targets {html.escape(", ".join(s["targets"]))}, each fine-tuned alone ({how}) '
                 "through all weights, the top 0.1% by gradient, the top 0.1% by gradient relative to the retain "
                 "set's sensitivity (selective), or a random 0.1%; EM after is the mean over targets "
                 "(retain and other memorized: against the original model's own continuations). Edit success = share "
                 "of targets with EM >= 40 on their new continuation. Top-1 changed = continuation positions (of each "
                 "paragraph's 50) whose teacher-forced top-1 token moved: unlike EM, one flip at a near-tie does not "
                 "count every later token.</p>")
    fig = MaskComparison.load(folder / "unlearn.safetensors").plot()
    parts.append(rb.figure(fig, "Unlearning should drop the target's bar and leave the others near where they started."))


SECTIONS: list[tuple[str, str, Callable[..., None]]] = [
    ("run", "What was run", _what_was_run),
    ("scan", "Scan: which paragraphs are memorized", _scan),
    ("gradients", "Gradient maps: memorized vs non-memorized", _gradients),
    ("heads", "Heads: the memorization head and its evidence", _heads),
    ("perturb", "Prefix perturbation", _perturb),
    ("unlearn", "Sparse unlearning and editing", _unlearn),
]
