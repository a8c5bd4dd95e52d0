"""EM and NLL against how often a paragraph was duplicated in the training data (the paper's
Fig. 2 and Fig. 8): from any scan whose paragraphs carry a duplication count (the ``count`` of
Carlini et al.'s released arrays, the organism's ``copies``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from memlens.core.errors import InputError
from memlens.core.results import Provenance, Result
from memlens.core.stats import spearman

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

# a memlens.ScanResult (scan.py calls this module; reading its paragraphs, em, nll and splits
# needs no import of it)
ScanLike = Any

#: the metadata columns read as a duplication count, in order of preference
COUNT_COLUMNS = ("count", "copies")


@dataclass(frozen=True, kw_only=True)
class DuplicationResult(Result):
    """EM and NLL per paragraph beside its duplication count.

    Attributes:
        paragraph_ids: the paragraphs with a numeric count (others left out).
        count: the duplication count; em: EM (tokens); nll: NLL (nats/token).
        count_column: the metadata column read.
        split: each paragraph's split (memorized / partly / non_memorized).
        provenance: the scan's model and the settings.
    """

    paragraph_ids: list[str]
    count: Float[Tensor, " n"] = field(repr=False)
    em: Int[Tensor, " n"] = field(repr=False)
    nll: Float[Tensor, " n"] = field(repr=False)
    split: list[str] = field(default_factory=list)
    count_column: str = "count"
    provenance: Provenance = field(default_factory=Provenance)

    def to_dataframe(self) -> "pd.DataFrame":
        """One row per paragraph: ``paragraph, count, em, nll, split``."""
        import pandas as pd

        return pd.DataFrame({"paragraph": self.paragraph_ids, "count": self.count.tolist(), "em": self.em.tolist(),
                             "nll": self.nll.tolist(), "split": self.split})

    def by_count(self) -> "pd.DataFrame":
        """Mean EM and NLL and the number of paragraphs per distinct count."""
        df = self.to_dataframe()
        return df.groupby("count").agg(n=("em", "size"), em=("em", "mean"), nll=("nll", "mean")).reset_index()

    def summary(self) -> dict[str, Any]:
        """Spearman correlation of EM and of NLL with the count, and the count range."""
        n = len(self.paragraph_ids)
        return {"count_column": self.count_column, "n": n,
                "count_min": float(self.count.min()) if n else None, "count_max": float(self.count.max()) if n else None,
                "spearman_em_vs_count": round(spearman(self.count.tolist(), self.em.tolist()), 4) if n > 1 else None,
                "spearman_nll_vs_count": round(spearman(self.count.tolist(), self.nll.tolist()), 4) if n > 1 else None}

    def plot(self) -> "go.Figure":
        """EM and NLL against the count (log axis; counts of 0 only in the histograms), and the
        histograms of EM and NLL by split."""
        from memlens.viz.scan import plot_duplication

        return plot_duplication(self.to_dataframe(), self.count_column)


def duplication_profile(result: ScanLike, count_column: str | None = None) -> DuplicationResult:
    """EM and NLL of a scan's paragraphs beside their duplication count.

    Args:
        result: a scan whose paragraphs have a count column in their metadata.
        count_column: the column (default: the first of ``count``, ``copies`` present).

    Raises:
        InputError: no such column, or no paragraph with a numeric count in it.
    """
    meta = result.paragraphs.metadata
    column = count_column or next((c for c in COUNT_COLUMNS if c in meta), None)
    if column is None or column not in meta:
        raise InputError(f"the scanned paragraphs have no duplication count column ({count_column or ' or '.join(COUNT_COLUMNS)}); "
                         f"their metadata has {sorted(meta) or 'no columns'}: read them with read_carlini_arrays "
                         "(count) or pass count_column=")
    values: list[float | None] = []
    for pid, v in zip(result.paragraphs.ids, meta[column]):
        try:
            x = float(v)
        except (TypeError, ValueError, OverflowError):
            values.append(None)
            continue
        if x == x and (x < 0 or x != int(x) or isinstance(v, bool)):  # the check read_carlini_arrays makes
            raise InputError(f"paragraph {pid!r}: {column} = {v!r} is not a count (a whole number >= 0); fix the "
                             "paragraph file's count column")
        values.append(x)
    keep = [i for i, v in enumerate(values) if v is not None and v == v]
    if not keep:
        raise InputError(f"no paragraph has a numeric {column!r}")
    splits = result.split_of()
    return DuplicationResult(
        paragraph_ids=[result.paragraphs.ids[i] for i in keep],
        count=torch.tensor([values[i] for i in keep], dtype=torch.float64),
        em=result.em[keep].clone(), nll=result.nll[keep].clone(), split=[splits[i] for i in keep],
        count_column=column, provenance=Provenance.capture(result.model_name, precision=getattr(getattr(result, "provenance", None), "precision", None),
                                                              count_column=column))
