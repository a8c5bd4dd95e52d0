"""scan(): exact match and NLL of every paragraph, and the memorized / partly / non-memorized split.

Results stream to ``<out>.partial`` (JSON lines) batch by batch; an interrupted scan resumes
from it without recomputing finished paragraphs (each row carries a hash of its paragraph's
tokens, so a paragraph whose content changed under the same id is scored again), and the result
file itself (a :class:`~memlens.core.results.Result` envelope) appears only when the scan is complete.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from memlens.core.progress import tqdm

from memlens.core.data import ParagraphSet, as_paragraph_set
from memlens.core.defaults import MIN_K, NON_MEMORIZED_MAX_EM
from memlens.core.errors import InputError
from memlens.core.io import check_output_file, remove_stray_temporaries, write_text_atomic
from memlens.core.lock import file_lock_path, locked
from memlens.core.metrics import check_min_k, teacher_forced_scores
from memlens.core.results import Provenance, Result
from memlens.core.precision import with_precision

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from memlens.analyses.duplication import DuplicationResult
    from memlens.core.model import HookedModel



#: paragraphs per forward pass of a scan when the caller gives none
DEFAULT_BATCH_SIZE = 16

@dataclass(frozen=True, kw_only=True)
class ScanResult(Result):
    """EM and NLL per paragraph, in the order of :attr:`paragraphs`.

    Attributes:
        paragraphs: the scanned paragraphs.
        em: greedy exact match of each continuation, 0..continuation_len tokens.
        nll: mean NLL of each true continuation, nats per token.
        extraction_logprob: log of the probability that the model produces the whole true
            continuation (the sum of its tokens' log-probabilities, nats; from the same pass).
            :attr:`extraction_prob` is its exponential. None in results saved before it existed.
        min_k_nll: mean NLL (nats/token) of the ``min_k`` share of continuation tokens with the
            highest NLL (Min-K% Prob); None in results saved before it existed.
        min_k: that share (e.g. 0.2).
        memorized_min_em: EM at or above which a paragraph counts as memorized (default: all).
        non_memorized_max_em: EM at or below which a paragraph counts as non-memorized (paper: 10).
        provenance: model, versions and settings.
    """

    paragraphs: ParagraphSet
    em: Int[Tensor, " n"] = field(repr=False)
    nll: Float[Tensor, " n"] = field(repr=False)
    extraction_logprob: Float[Tensor, " n"] | None = field(default=None, repr=False)
    min_k_nll: Float[Tensor, " n"] | None = field(default=None, repr=False)
    min_k: float | None = None
    memorized_min_em: int | None = None
    non_memorized_max_em: int = NON_MEMORIZED_MAX_EM
    provenance: Provenance = field(default_factory=Provenance)

    def __post_init__(self) -> None:
        _, mem_min = split_thresholds(self.paragraphs.continuation_len, self.non_memorized_max_em,
                                      self.memorized_min_em)
        object.__setattr__(self, "memorized_min_em", mem_min)
        if len(self.em) != len(self.paragraphs) or len(self.nll) != len(self.paragraphs):
            raise InputError(f"{len(self.em)} EM and {len(self.nll)} NLL values for {len(self.paragraphs)} paragraphs")

    @property
    def extraction_prob(self) -> Float[Tensor, " n"] | None:
        """Probability of the whole true continuation under the model (float64: it is tiny for
        paragraphs that are not memorized)."""
        return None if self.extraction_logprob is None else self.extraction_logprob.double().exp()

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
        return split_labels(self.em.tolist(), self.non_memorized_max_em, self.memorized_min_em)

    def to_dataframe(self) -> "pd.DataFrame":
        """One row per paragraph: ``paragraph, em, nll, split`` and the paragraphs' metadata
        columns; a metadata column named like a computed one (the released CSV's ``em`` and
        ``nll``) is kept as ``reference_<name>``."""
        import pandas as pd

        df = pd.DataFrame({"paragraph": self.paragraphs.ids, "em": self.em.tolist(),
                           "nll": self.nll.tolist(), "split": self.split_of()})
        if self.extraction_logprob is not None:
            df["extraction_logprob"] = self.extraction_logprob.tolist()
            df["extraction_prob"] = self.extraction_prob.tolist()
        if self.min_k_nll is not None:
            df["min_k_nll"] = self.min_k_nll.tolist()
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

    def duplication(self, count_column: str | None = None) -> "DuplicationResult":
        """EM and NLL beside each paragraph's duplication count (:func:`memlens.duplication_profile`)."""
        from memlens.analyses.duplication import duplication_profile

        return duplication_profile(self, count_column)

    def plot(self) -> "go.Figure":
        """Histogram of EM over paragraphs (plotly)."""
        from memlens.viz.scan import plot_em_histogram

        return plot_em_histogram(self.em, self.paragraphs.continuation_len, self.model_name)

    def _repr_html_(self) -> str:
        return self.to_dataframe().groupby("split")[["em", "nll"]].describe().to_html()


@with_precision
def scan(
    model: "HookedModel",
    paragraphs: ParagraphSet | Sequence[str] | Tensor,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    non_memorized_max_em: int | None = None,
    memorized_min_em: int | None = None,
    min_k: float = MIN_K,
    out: str | Path | None = None,
    progress: bool = True,
) -> ScanResult:
    """EM and NLL of every paragraph's continuation from one teacher-forced pass (exact for
    greedy decoding: EM is the first position where the argmax differs from the true token).

    Args:
        model: the model.
        paragraphs: the paragraphs (prefix + continuation); a list of texts (tokenized with the
            model's tokenizer, 50 + 50 tokens) or a ``[n, length]`` token tensor is turned into one.
        batch_size: paragraphs per forward pass.
        non_memorized_max_em: EM at or below which a paragraph counts as non-memorized (default:
            the paper's 10, or just below ``memorized_min_em`` when that is lower; see
            :func:`split_thresholds`).
        memorized_min_em: EM at or above which it counts as memorized (default: the whole continuation).
        min_k: the share of continuation tokens in the min-K% NLL column (0.2: the 20% of tokens
            with the highest NLL).
        out: with a path, finished batches are appended to ``<out>.partial`` and a later call with
            the same ``out`` skips the paragraphs already there; ``out`` itself (a result envelope)
            is written, atomically, only when every paragraph is done.
        progress: show a progress bar.

    Returns:
        A :class:`ScanResult`: EM in tokens (0..continuation_len), NLL in nats per token.
    """
    paragraphs = as_paragraph_set(paragraphs, model, "scan")
    if len(paragraphs) == 0:
        raise InputError("scan got an empty ParagraphSet")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    check_min_k(min_k)
    paragraphs.validate(model.vocab_size, model.n_ctx)
    if out is None:
        return _scan(model, paragraphs, batch_size, non_memorized_max_em, memorized_min_em, min_k, None, progress)
    check_output_file(out, "scan result file")
    with locked(file_lock_path(Path(out)), f"the scan result file {out}"):
        if Path(out).parent.is_dir():
            remove_stray_temporaries(Path(out).parent, Path(out).name)  # of a save killed midway
        return _scan(model, paragraphs, batch_size, non_memorized_max_em, memorized_min_em, min_k, Path(out), progress)


def _scan(model: "HookedModel", paragraphs: ParagraphSet, batch_size: int, non_memorized_max_em: int | None,
          memorized_min_em: int | None, min_k: float, out: Path | None, progress: bool) -> ScanResult:
    done: dict[str, tuple[int, float, float, float]] = {}
    partial = Path(str(out) + ".partial") if out is not None else None
    non_max, mem_min = split_thresholds(paragraphs.continuation_len, non_memorized_max_em, memorized_min_em)
    fingerprint = {"model": model.name, "prefix_len": paragraphs.prefix_len,
                   "continuation_len": paragraphs.continuation_len, "min_k": min_k, "precision": model.precision}
    if partial is not None and partial.exists():
        done = _read_partial(partial, fingerprint, dict(zip(paragraphs.ids, content_hashes(paragraphs.tokens))))
    todo = [i for i, pid in enumerate(paragraphs.ids) if pid not in done]
    if partial is not None and not partial.exists():
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(fingerprint) + "\n", encoding="utf-8")
    bar = tqdm(total=len(paragraphs), initial=len(paragraphs) - len(todo), desc="scan", disable=not progress)
    for s in range(0, len(todo), batch_size):
        idx = todo[s : s + batch_size]
        scored = score_batch(model, paragraphs[idx], batch_size, non_max, mem_min, min_k)
        rows = []
        for row in scored.rows():
            done[row["id"]] = (row["em"], row["nll"], row["extraction_logprob"], row["min_k_nll"])
            rows.append(json.dumps({"id": row["id"], "sha": row["sha"], "em": row["em"], "nll": row["nll"],
                                    "logprob": row["extraction_logprob"], "min_k_nll": row["min_k_nll"]}))
        if partial is not None:
            with partial.open("a", encoding="utf-8") as f:
                f.write("\n".join(rows) + "\n")
                f.flush()
        bar.update(len(idx))
    bar.close()
    em = torch.tensor([done[pid][0] for pid in paragraphs.ids], dtype=torch.long)
    nll = torch.tensor([done[pid][1] for pid in paragraphs.ids], dtype=torch.float)
    logprob = torch.tensor([done[pid][2] for pid in paragraphs.ids], dtype=torch.float64)
    min_k_nll = torch.tensor([done[pid][3] for pid in paragraphs.ids], dtype=torch.float)
    result = ScanResult(paragraphs=paragraphs, em=em, nll=nll, extraction_logprob=logprob, min_k_nll=min_k_nll,
                        min_k=min_k, memorized_min_em=memorized_min_em,
                        non_memorized_max_em=non_max,
                        provenance=Provenance.capture(model, non_memorized_max_em=non_max,
                                                      memorized_min_em=memorized_min_em, min_k=min_k))
    if out is not None and partial is not None:
        result.save(out)
        partial.unlink()
    return result


@dataclass(frozen=True)
class ScoredBatch:
    """The scan's columns for a batch of paragraphs: what every scan engine (in memory,
    streaming table, Ray worker) writes per row.

    Attributes:
        ids: paragraph ids.
        em: exact match in tokens.
        nll: mean NLL of the continuation, nats per token.
        extraction_logprob: log P(whole continuation), float64 nats.
        min_k_nll: mean NLL of the ``min_k`` share of continuation tokens with the highest NLL.
        split: ``memorized`` / ``partly`` / ``non_memorized``.
        sha: the content hash of each paragraph's tokens.
    """

    ids: list[str]
    em: Int[Tensor, " n"]
    nll: Float[Tensor, " n"]
    extraction_logprob: Float[Tensor, " n"]
    min_k_nll: Float[Tensor, " n"]
    split: list[str]
    sha: list[str]

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-able dict per paragraph (the table columns)."""
        return [{"id": pid, "em": int(e), "nll": float(n), "extraction_logprob": float(lp), "min_k_nll": float(mk),
                 "split": sp, "sha": sha}
                for pid, e, n, lp, mk, sp, sha in zip(self.ids, self.em.tolist(), self.nll.tolist(),
                                                       self.extraction_logprob.tolist(), self.min_k_nll.tolist(),
                                                       self.split, self.sha)]


def score_batch(model: "HookedModel", paragraphs: ParagraphSet, batch_size: int, non_memorized_max_em: int,
                memorized_min_em: int, min_k: float = MIN_K) -> ScoredBatch:
    """The one scoring kernel of every scan engine: EM, NLL, extraction log-probability and
    min-K% NLL from one teacher-forced pass per ``batch_size`` paragraphs, the split by the given
    thresholds (already checked, see :func:`split_thresholds`) and the content hashes."""
    scores = teacher_forced_scores(model, paragraphs.tokens, paragraphs.prefix_len, batch_size, min_k=min_k)
    em = scores.em.cpu()
    assert scores.min_k_nll is not None
    return ScoredBatch(ids=list(paragraphs.ids), em=em, nll=scores.nll.cpu().float(),
                       extraction_logprob=extraction_logprob(scores.token_nll).cpu(),
                       min_k_nll=scores.min_k_nll.cpu().float(),
                       split=split_labels(em.tolist(), non_memorized_max_em, memorized_min_em),
                       sha=content_hashes(paragraphs.tokens))


def split_thresholds(continuation_len: int, non_memorized_max_em: int | None = None,
                     memorized_min_em: int | None = None) -> tuple[int, int]:
    """The split's thresholds (EM in tokens) with their defaults, the paper's 10 and the whole
    continuation, checked: ``-1 <= non_memorized_max_em < memorized_min_em <= continuation_len``.
    Any ordered thresholds are allowed: a ``memorized_min_em`` at or below the default 10 lowers
    the default ``non_memorized_max_em`` to just below it (``memorized_min_em=0``: every paragraph
    is memorized; ``non_memorized_max_em=-1``: none is non-memorized)."""
    mem_min = continuation_len if memorized_min_em is None else memorized_min_em
    if non_memorized_max_em is None:
        non_max = min(NON_MEMORIZED_MAX_EM, mem_min - 1)
    else:
        non_max = non_memorized_max_em
    if not -1 <= non_max < mem_min <= continuation_len:
        raise InputError(f"thresholds must satisfy -1 <= non_memorized_max_em ({non_max}) < memorized_min_em "
                         f"({mem_min}) <= continuation_len ({continuation_len})")
    return non_max, mem_min


def split_labels(em: Sequence[int], non_memorized_max_em: int, memorized_min_em: int) -> list[str]:
    """``memorized``, ``partly`` or ``non_memorized`` for each EM value: the one rule of every scan."""
    return ["memorized" if e >= memorized_min_em else "non_memorized" if e <= non_memorized_max_em else "partly"
            for e in em]


def extraction_logprob(token_nll: Float[Tensor, "n continuation"]) -> Float[Tensor, " n"]:
    """log P(whole continuation) = -(sum of the tokens' NLL), in float64 nats."""
    return -token_nll.double().sum(-1)


def content_hashes(tokens: Int[Tensor, "n length"]) -> list[str]:
    """A short hash (16 hex digits of SHA-256) of each paragraph's token ids: what a resumed scan
    compares to tell a paragraph that changed under the same id."""
    rows = tokens.to(torch.int64).cpu().numpy()
    return [hashlib.sha256(row.tobytes()).hexdigest()[:16] for row in rows]


def _read_partial(path: Path, fingerprint: dict, wanted: dict[str, str]) -> dict[str, tuple[int, float, float, float]]:
    """The finished rows of an interrupted scan whose paragraph (id and content hash) is still
    wanted; the file is rewritten without the others and without a torn last line."""
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    try:
        header = json.loads(lines[0])
    except (ValueError, RecursionError):
        header = None
    if not isinstance(header, dict) or "model" not in header:
        raise InputError(f"{path} is damaged (its first line is not a scan header); delete it and scan again")
    if "min_k" not in header:  # an older memlens's: its rows have no min-K column and are scored again
        header = header | {"min_k": fingerprint["min_k"]}
    if "precision" not in header:  # written before memlens recorded the precision: fp32
        header = header | {"precision": "fp32"}
    if header != fingerprint:
        from memlens.core.checkpoint import identity_differences

        raise InputError(
            f"{path} holds a scan of another model, paragraph split, min_k or precision "
            f"({'; '.join(identity_differences(header, fingerprint))}); delete it or choose another output file"
        )
    done = {}
    kept = [json.dumps(fingerprint)]
    changed = 0
    for line in lines[1:]:
        try:
            row = json.loads(line)
            pid, em, nll, logprob = row["id"], int(row["em"]), float(row["nll"]), float(row["logprob"])
            min_k_nll = float(row["min_k_nll"])
        except (ValueError, RecursionError, TypeError, KeyError):
            continue  # the last line of an interrupted write, or a damaged one: scored again
        if pid not in wanted:
            continue
        if row.get("sha") != wanted[pid]:
            changed += "sha" in row  # a row without a hash (an older memlens) is scored again quietly
            continue
        done[pid] = (em, nll, logprob, min_k_nll)
        kept.append(line)
    if changed:
        warnings.warn(f"{path}: {changed} paragraph(s) changed since the interrupted scan (same id, other "
                      "tokens); scoring them again", stacklevel=3)
    write_text_atomic(path, "\n".join(kept) + "\n")  # drop a torn last line before appending
    return done
