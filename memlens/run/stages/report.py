"""The report stage: ``report.html`` from every other stage's files (:func:`memlens.write_report`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memlens.run.report import write_report
from memlens.run.stage import Stage, register_stage

if TYPE_CHECKING:
    from memlens.run.context import RunContext


def report_stage(ctx: "RunContext") -> dict[str, Any]:
    """The offline HTML report of the run folder -> ``report.html``."""
    path = write_report(ctx.folder)
    return {"path": str(path), "bytes": path.stat().st_size}


ROW = register_stage(Stage("report", report_stage, "the offline HTML report of a run folder -> report.html"))
