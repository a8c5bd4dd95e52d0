"""What several stage modules use: the scan's splits and circuitsvis views as JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memlens.run.stage import StageSkipped

if TYPE_CHECKING:
    from memlens.core.data import ParagraphSet
    from memlens.run.context import RunContext
    from memlens.viz.circuits import CircuitsView


def splits(ctx: "RunContext", max_paragraphs: int | None = None) -> tuple["ParagraphSet", "ParagraphSet"]:
    """The scan's memorized and non-memorized paragraphs (at most ``max_paragraphs`` of each);
    :class:`StageSkipped` when either is empty."""
    res = ctx.scan_result()
    mem, non = res.memorized(), res.non_memorized()
    if len(mem) == 0 or len(non) == 0:
        raise StageSkipped(f"needs memorized and non-memorized paragraphs (found {len(mem)} / {len(non)})")
    if max_paragraphs is None:
        return mem, non
    return mem[:max_paragraphs], non[:max_paragraphs]


def view_dict(view: "CircuitsView") -> dict[str, Any]:
    """A circuitsvis view as the JSON a stage writes and the report reads back."""
    return {"component": view.component, "props": view.props, "title": view.title, "caption": view.caption}


def perturbed_memorized(ctx: "RunContext") -> "ParagraphSet | None":
    """The perturbation stage's worst perturbed version of each memorized paragraph, if it ran."""
    from memlens.core.data import ParagraphSet

    path = ctx.folder.file("perturbed_memorized")
    return ParagraphSet.load(path) if path.exists() else None


def disabled(stage: str) -> StageSkipped:
    """The skip of a stage whose settings turn it off."""
    return StageSkipped(f"turned off in its settings (set [{stage}] enabled = true to run it)")
