"""The offline HTML report of a run folder: one section per row of the Stage table that draws one
(:attr:`memlens.run.stage.Stage.report`, written in each stage's module), each built from the files
its stage wrote.

plotly.js and the circuitsvis bundle are inlined once each; nothing is fetched from any host.
Every figure carries a one-line reading guide.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Sequence

from memlens.core.io import read_json, write_text_atomic
from memlens.run.folder import ForeignResultError, RunFolder
from memlens.run.stage import Stage, stages as stage_table
from memlens.viz.circuits import CircuitsView
from memlens.viz.html import ReportBuilder, table


def _missing(stage: str, folder: RunFolder, summary: dict[str, Any] | None) -> str | None:
    if summary is None:
        return (f'<p class="missing">Stage <code>{stage}</code> has no results in this folder; run '
                f"<code>memlens {stage} --out {html.escape(str(folder.path))}</code>.</p>")
    if "skipped" in summary:
        return f'<p class="missing">Stage <code>{stage}</code> was skipped: {html.escape(summary["skipped"])}.</p>'
    return None


def views_html(folder: RunFolder, key: str, stage: str) -> list[str]:
    """The HTML fragments of the circuitsvis views a stage wrote to its JSON file ``key``."""
    data = folder.read_json_file(key, stage) or []
    return [CircuitsView(v["component"], v["props"], v.get("title", ""), v.get("caption", "")).fragment() for v in data]


def write_report(folder: str | Path | RunFolder, stages: Sequence[Stage] | None = None) -> Path:
    """Build ``report.html`` in the run folder from its stage results; returns its path.

    Args:
        folder: the run folder.
        stages: the stages whose sections are drawn, in order (default: the Stage table).
    """
    rf = folder if isinstance(folder, RunFolder) else RunFolder(Path(folder))
    run = rf.read_manifest() or {}
    rb = ReportBuilder(f"memlens report: {run.get('model', rf.path.name)}")
    _what_was_run(rb, rb.section("run", "What was run"), rf, run)
    for stage in stage_table() if stages is None else stages:
        if stage.report is None:
            continue
        parts = rb.section(stage.name, stage.title or stage.name)
        summary = rf.read_stage_summary(stage.name)
        if (missing := _missing(stage.name, rf, summary)) is not None:
            parts.append(missing)
            continue
        drawn = len(parts)
        try:
            stage.report(rb, parts, rf, summary)
        except ForeignResultError:
            raise
        except Exception as e:  # a damaged file or summary: this section says so, the others are still drawn
            del parts[drawn:]
            parts.append(f'<p class="missing">The {html.escape(stage.name)} section could not be drawn: '
                         f"{html.escape(type(e).__name__)}: {html.escape(str(e)[:300])}. Its files are damaged; compute "
                         f"it again with <code>memlens {html.escape(stage.name)} --out "
                         f"{html.escape(str(rf.path))}</code>.</p>")
    write_text_atomic(rf.report, rb.html())
    return rf.report


def _what_was_run(rb: ReportBuilder, parts: list[str], folder: RunFolder, run: dict[str, Any]) -> None:
    summary = (read_json(folder.summary, "delete it and run `memlens run` again") if folder.summary.exists() else None) or {}
    para = run.get("paragraphs")
    rows = [{"item": "model", "value": run.get("model")},
            {"item": "paragraphs", "value": para["path"] if para else "the organism's ground-truth set"},
            {"item": "seed", "value": run.get("seed")}, {"item": "started", "value": run.get("started")}]
    config = run.get("config") or {}
    precision = config.get("precision", "fp32")
    fp32 = [s for s in config.get("fp32_stages") or [] if precision != "fp32"]
    rows.insert(1, {"item": "precision", "value": precision + (f" (fp32 for: {', '.join(fp32)})" if fp32 else "")})
    preset = config.get("preset")
    if preset:
        changed = run.get("preset_overrides") or []
        rows.insert(1, {"item": "settings", "value": f"{preset} preset" + (
            f", with overrides: {'; '.join(changed)}" if changed else ", as the preset sets them")})
    rows += [{"item": k, "value": v} for k, v in (run.get("versions") or {}).items()]
    rows += [{"item": f"seconds: {k}", "value": v} for k, v in (summary.get("seconds") or {}).items()]
    rows.append({"item": "torch threads", "value": summary.get("torch_threads")})
    parts.append(table(rows))
    org = (folder.read_stage_summary("scan") or {}).get("organism")
    if org:
        parts.append("<h3>Organism</h3>" + table([{"item": k, "value": json.dumps(v) if isinstance(v, (dict, list)) else v}
                                                  for k, v in org.items()]))
