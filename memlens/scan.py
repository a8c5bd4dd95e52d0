"""scan(): exact match and NLL of every paragraph, and the memorized / partly / non-memorized split.

Results stream to ``<out>.partial`` (JSON lines) batch by batch; an interrupted scan resumes
from it without recomputing finished paragraphs, and the result file itself (a
:class:`~memlens.results.Result` envelope) appears only when the scan is complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from memlens.data import ParagraphSet
from memlens.errors import InputError
from memlens.io import write_text_atomic
from memlens.metrics import teacher_forced_scores
from memlens.results import Provenance, Result

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from memlens.model import HookedModel

DEFAULT_NON_MEMORIZED_MAX_EM = 10


@dataclass(frozen=True, kw_only=True)
class ScanResult(Result):
    """EM and NLL per paragraph, in the order of :attr:`paragraphs`.

    Attributes:
        paragraphs: the scanned paragraphs.
        em: greedy exact match of each continuation, 0..continuation_len tokens.
        nll: mean NLL of each true continuation, nats per token.
        memorized_min_em: EM at or above which a paragraph counts as memorized (default: all).
        non_memorized_max_em: EM at or below which a paragraph counts as non-memorized (paper: 10).
        provenance: model, versions and settings.
    """

    paragraphs: ParagraphSet
    em: Int[Tensor, " n"] = field(repr=False)
    nll: Float[Tensor, " n"] = field(repr=False)
    memorized_min_em: int | None = None
    non_memorized_max_em: int = DEFAULT_NON_MEMORIZED_MAX_EM
    provenance: Provenance = field(default_factory=Provenance)

    def __post_init__(self) -> None:
        if self.memorized_min_em is None:
            object.__setattr__(self, "memorized_min_em", self.paragraphs.continuation_len)
        if not 0 <= self.non_memorized_max_em < self.memorized_min_em <= self.paragraphs.continuation_len:
            raise InputError(
                f"thresholds must satisfy 0 <= non_memorized_max_em ({self.non_memorized_max_em}) < "
                f"memorized_min_em ({self.memorized_min_em}) <= continuation_len ({self.paragraphs.continuation_len})"
            )
        if len(self.em) != len(self.paragraphs) or len(self.nll) != len(self.paragraphs):
            raise InputError(f"{len(self.em)} EM and {len(self.nll)} NLL values for {len(self.paragraphs)} paragraphs")

    @property
    def model_name(self) -> str:
        return self.provenance.model

    def __len__(self) -> int:
        return len(self.paragraphs)

    @property
    def memorized_mask(self) -> Bool[Tensor, " n"]:
        return self.em >= self.memorized_min_em

    @property
    def non_memorized_mask(self) -> Bool[Tensor, " n"]:
        return self.em <= self.non_memorized_max_em

    def memorized(self) -> ParagraphSet:
        """Paragraphs whose whole continuation is recited (EM >= ``memorized_min_em``)."""
        return self.paragraphs[self.memorized_mask]

    def non_memorized(self) -> ParagraphSet:
        """Paragraphs with EM <= ``non_memorized_max_em``."""
        return self.paragraphs[self.non_memorized_mask]

    def partly_memorized(self) -> ParagraphSet:
        """The paragraphs in between."""
        return self.paragraphs[~self.memorized_mask & ~self.non_memorized_mask]

    def split_of(self) -> list[str]:
        """``memorized``, ``partly`` or ``non_memorized`` for each paragraph."""
        return [
            "memorized" if m else "non_memorized" if n else "partly"
            for m, n in zip(self.memorized_mask.tolist(), self.non_memorized_mask.tolist())
        ]

    def to_dataframe(self) -> "pd.DataFrame":
        """One row per paragraph: ``paragraph, em, nll, split`` and the paragraphs' metadata
        columns; a metadata column named like a computed one (the released CSV's ``em`` and
        ``nll``) is kept as ``reference_<name>``."""
        import pandas as pd

        df = pd.DataFrame({"paragraph": self.paragraphs.ids, "em": self.em.tolist(),
                           "nll": self.nll.tolist(), "split": self.split_of()})
        for key, col in self.paragraphs.metadata.items():
            df[f"reference_{key}" if key in df.columns else key] = col
        return df

    def summary(self) -> dict[str, Any]:
        """Counts and mean EM / NLL per split."""
        out: dict[str, Any] = {"model": self.model_name, "n": len(self),
                               "prefix_len": self.paragraphs.prefix_len,
                               "continuation_len": self.paragraphs.continuation_len}
        splits = self.split_of()
        for name in ("memorized", "partly", "non_memorized"):
            sel = torch.tensor([s == name for s in splits], dtype=torch.bool)
            out[name] = {
                "count": int(sel.sum()),
                "mean_em": round(float(self.em[sel].float().mean()), 3) if sel.any() else None,
                "mean_nll": round(float(self.nll[sel].mean()), 4) if sel.any() else None,
            }
        return out

    def plot(self) -> "go.Figure":
        """Histogram of EM over paragraphs (plotly)."""
        import plotly.graph_objects as go

        fig = go.Figure(go.Histogram(x=self.em.tolist(), xbins=dict(start=-0.5, end=self.paragraphs.continuation_len + 0.5, size=1)))
        fig.update_layout(title=f"Exact match of greedy continuations ({self.model_name})",
                          xaxis_title="EM (tokens)", yaxis_title="paragraphs", bargap=0.05)
        return fig

    def _repr_html_(self) -> str:
        return self.to_dataframe().groupby("split")[["em", "nll"]].describe().to_html()


def scan(
    model: "HookedModel",
    paragraphs: ParagraphSet,
    *,
    batch_size: int = 16,
    non_memorized_max_em: int = DEFAULT_NON_MEMORIZED_MAX_EM,
    memorized_min_em: int | None = None,
    out: str | Path | None = None,
    progress: bool = True,
) -> ScanResult:
    """EM and NLL of every paragraph's continuation from one teacher-forced pass (exact for
    greedy decoding: EM is the first position where the argmax differs from the true token).

    Args:
        model: the model.
        paragraphs: the paragraphs (prefix + continuation).
        batch_size: paragraphs per forward pass.
        non_memorized_max_em: EM at or below which a paragraph counts as non-memorized (paper: 10).
        memorized_min_em: EM at or above which it counts as memorized (default: the whole continuation).
        out: with a path, finished batches are appended to ``<out>.partial`` and a later call with
            the same ``out`` skips the paragraphs already there; ``out`` itself (a result envelope)
            is written, atomically, only when every paragraph is done.
        progress: show a progress bar.

    Returns:
        A :class:`ScanResult`: EM in tokens (0..continuation_len), NLL in nats per token.
    """
    if len(paragraphs) == 0:
        raise InputError("scan got an empty ParagraphSet")
    paragraphs.validate(model.vocab_size, model.n_ctx)
    done: dict[str, tuple[int, float]] = {}
    partial = Path(str(out) + ".partial") if out is not None else None
    fingerprint = {"model": model.name, "prefix_len": paragraphs.prefix_len,
                   "continuation_len": paragraphs.continuation_len}
    if partial is not None and partial.exists():
        done = _read_partial(partial, fingerprint, paragraphs)
    todo = [i for i, pid in enumerate(paragraphs.ids) if pid not in done]
    if partial is not None and not partial.exists():
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(fingerprint) + "\n", encoding="utf-8")
    bar = tqdm(total=len(paragraphs), initial=len(paragraphs) - len(todo), desc="scan", disable=not progress)
    for s in range(0, len(todo), batch_size):
        idx = todo[s : s + batch_size]
        scores = teacher_forced_scores(model, paragraphs.tokens[idx], paragraphs.prefix_len, batch_size)
        rows = []
        for j, i in enumerate(idx):
            done[paragraphs.ids[i]] = (int(scores.em[j]), float(scores.nll[j]))
            rows.append(json.dumps({"id": paragraphs.ids[i], "em": int(scores.em[j]), "nll": float(scores.nll[j])}))
        if partial is not None:
            with partial.open("a", encoding="utf-8") as f:
                f.write("\n".join(rows) + "\n")
                f.flush()
        bar.update(len(idx))
    bar.close()
    em = torch.tensor([done[pid][0] for pid in paragraphs.ids], dtype=torch.long)
    nll = torch.tensor([done[pid][1] for pid in paragraphs.ids], dtype=torch.float)
    result = ScanResult(paragraphs=paragraphs, em=em, nll=nll, memorized_min_em=memorized_min_em,
                        non_memorized_max_em=non_memorized_max_em,
                        provenance=Provenance.capture(model, non_memorized_max_em=non_memorized_max_em,
                                                      memorized_min_em=memorized_min_em))
    if out is not None:
        result.save(out)
        partial.unlink()
    return result


def _read_partial(path: Path, fingerprint: dict, paragraphs: ParagraphSet) -> dict[str, tuple[int, float]]:
    lines = path.read_text(encoding="utf-8").split("\n")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:
        header = None
    if header != fingerprint:
        raise InputError(
            f"{path} holds a scan of another model or paragraph split ({header}); "
            "delete it or choose another output file"
        )
    done = {}
    kept = [lines[0]]
    wanted = set(paragraphs.ids)
    for line in lines[1:]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # the last line of an interrupted write
        if row.get("id") in wanted:
            done[row["id"]] = (int(row["em"]), float(row["nll"]))
            kept.append(line)
    write_text_atomic(path, "\n".join(kept) + "\n")  # drop a torn last line before appending
    return done
