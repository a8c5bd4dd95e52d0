"""What the core and the analyses may ask of a model's ground truth (which paragraphs it memorized
and how often it saw them). The organism's :class:`~memlens.organism.OrganismInfo` fills it; any
object with these members does, so core code never imports the organism."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from jaxtyping import Int
from torch import Tensor

if TYPE_CHECKING:
    from memlens.core.data import ParagraphSet


@runtime_checkable
class GroundTruth(Protocol):
    """A model's known memorization: its paragraphs, their duplication counts and its corpus's
    unigram counts.

    Attributes:
        unigram_counts: ``[vocab]`` token counts over the model's training stream.
    """

    unigram_counts: Int[Tensor, " vocab"]

    def paragraph_set(self) -> "ParagraphSet":
        """The paragraphs whose memorization is known (planted, background, held out)."""
        ...

    def evaluate(self, scan_result: Any) -> dict[str, Any]:
        """How a scan's memorized split agrees with the known memorization."""
        ...

    def summary(self) -> dict[str, Any]:
        """The ground truth's headline facts (JSON-able)."""
        ...
