"""The paper's data pipeline: the released arrays of Carlini et al. (2022), the Appendix A.1
filters as the official code applies them, and the official repository's released token tensors.

- :func:`read_carlini_arrays`: ``prompts_100.npy`` (N x 100 token ids) and ``counts_100.npy``
  (how often each paragraph occurs in the Pile) -> a :class:`ParagraphSet` with a ``count`` column;
- :func:`paper_filters`: count 0, fewer than 50% unique tokens, keyword token sets, EOS; each
  filter's drop count reported (``utils/dataLoaders.py: preprocess_pile_seqs``);
- :func:`read_token_tensor`: ``preds/*.pt`` and ``perturbed/*.pt`` read with ``weights_only=True``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from memlens.core.data import ParagraphSet
from memlens.core.defaults import DEFAULT_CONTINUATION_LEN, DEFAULT_PREFIX_LEN
from memlens.core.errors import InputError

#: GPT-Neo's (and GPT-2's) end-of-text token, which the official code strips from keyword token sets
GPT2_EOS = 50256


def read_carlini_arrays(
    prompts: str | Path, counts: str | Path | None = None, prefix_len: int = DEFAULT_PREFIX_LEN, continuation_len: int = DEFAULT_CONTINUATION_LEN,
) -> ParagraphSet:
    """The released paragraphs of Carlini et al. (2022) as a ParagraphSet.

    Args:
        prompts: ``prompts_100.npy``: an ``[N, 100]`` integer array of token ids (read with
            ``allow_pickle=False``).
        counts: ``counts_100.npy``: N integers, each paragraph's number of occurrences in the Pile
            (the ``count`` metadata column); None leaves the column out.
        prefix_len, continuation_len: the split (the paper's 50 / 50).

    Returns:
        Paragraphs with ids ``"0".."N-1"`` (their row in the array) and a ``count`` column.
    """
    import numpy as np

    tokens = _load_npy(Path(prompts), "prompts")
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
        raise InputError(f"{prompts}: expected an [N, {prefix_len + continuation_len}] integer array of token ids, "
                         f"got shape {tokens.shape} and dtype {tokens.dtype}")
    meta: dict[str, list[Any]] = {}
    if counts is not None:
        c = _load_npy(Path(counts), "counts").reshape(-1)
        if not np.issubdtype(c.dtype, np.integer) and not np.issubdtype(c.dtype, np.floating):
            raise InputError(f"{counts}: expected N numbers (occurrence counts), got dtype {c.dtype}")
        if len(c) != len(tokens):
            raise InputError(f"{counts}: {len(c)} counts for the {len(tokens)} paragraphs of {prompts}; "
                             "pass the counts file that belongs to this prompts file")
        values = c.tolist()
        for row, x in enumerate(values):
            if isinstance(x, float) and not (x == x and x.is_integer()):
                raise InputError(f"{counts}: row {row} holds the count {x!r}, not a whole number; counts are occurrences "
                                 "in the Pile (check the file)")
            if x < 0:
                raise InputError(f"{counts}: row {row} holds the count {x!r}; counts are occurrences, never negative")
        meta["count"] = [int(x) for x in values]
    return ParagraphSet(torch.from_numpy(tokens.astype("int64")), prefix_len, continuation_len,
                        [str(i) for i in range(len(tokens))], metadata=meta)


def _load_npy(path: Path, what: str) -> Any:
    import numpy as np

    if not path.exists():
        raise InputError(f"{path}: no such file (the {what} array)")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise InputError(f"{path}: not a NumPy .npy array of plain numbers ({e})") from None


def keyword_variants(keywords: Sequence[str]) -> list[str]:
    """Each keyword as written, UPPER and Capitalized, each with and without a leading space (the
    official code's ``expand_filter_list``): 6 variants per keyword, in that order."""
    forms = list(itertools.chain.from_iterable((k, k.upper(), k.capitalize()) for k in keywords))
    return forms + [" " + f for f in forms]


@dataclass
class FilterReport:
    """What :func:`paper_filters` kept and how many paragraphs each filter dropped.

    Attributes:
        paragraphs: the paragraphs that passed every filter (in their original order).
        dropped: filter name -> paragraphs it dropped, in the order the filters ran (a paragraph
            is counted by the first filter that drops it).
        n_before: paragraphs given.
    """

    paragraphs: ParagraphSet
    dropped: dict[str, int] = field(default_factory=dict)
    n_before: int = 0

    def to_dataframe(self) -> Any:
        import pandas as pd

        return pd.DataFrame([{"filter": k, "dropped": v} for k, v in self.dropped.items()]
                            + [{"filter": "kept", "dropped": len(self.paragraphs)}])


def paper_filters(
    paragraphs: ParagraphSet,
    keywords: Sequence[str] = (),
    tokenize: Callable[[str], Sequence[int]] | None = None,
    min_unique_share: float = 0.5,
    drop_zero_count: bool = True,
    eos_token_id: int | None = GPT2_EOS,
    drop_eos: bool = True,
    count_range: tuple[int, int] | None = None,
) -> FilterReport:
    """The paper's Appendix A.1 filters, as ``preprocess_pile_seqs`` in the official code runs them.

    In order: (1) ``count`` 0 (needs a ``count`` column); (2) at most ``min_unique_share`` x length
    distinct tokens (the code keeps ``n_unique > int(0.5 * 100)``); (3) keywords: a paragraph is
    dropped when the token set of any variant of a keyword (:func:`keyword_variants`, EOS ids
    removed) is a subset of the paragraph's token set, the code's test, not a contiguous match;
    (4) ``drop_eos``: paragraphs that contain ``eos_token_id``; (5) ``count_range``: counts outside
    [low, high] (the code's ``count_ranges``).

    Args:
        paragraphs: e.g. :func:`read_carlini_arrays`'s.
        keywords: the keywords (the paper lists ten in Appendix A.1; pass them here).
        tokenize: text -> token ids (e.g. ``lambda s: model.to_tokens(s)[0].tolist()``); needed
            when ``keywords`` is not empty.
        min_unique_share: the unique-token threshold (0 turns the filter off).
        drop_zero_count: filter (1).
        eos_token_id: the end-of-text id (stripped from keyword token sets; filter (4)).
        drop_eos: filter (4).
        count_range: filter (5), inclusive; None: off.

    Returns:
        A :class:`FilterReport` with the kept paragraphs and each filter's drop count.
    """
    if isinstance(min_unique_share, bool) or not isinstance(min_unique_share, (int, float)) \
            or not 0 <= min_unique_share <= 1:  # also refuses NaN, which would turn the filter off
        raise InputError(f"min_unique_share must be a share in [0, 1] (0: off), got {min_unique_share!r}")
    if isinstance(keywords, str):
        raise InputError(f"keywords must be a list of words, got the string {keywords!r} (write [{keywords!r}])")
    if count_range is not None:
        if len(count_range) != 2 or not all(isinstance(c, int) and not isinstance(c, bool) for c in count_range):
            raise InputError(f"count_range must be two integers (low, high), got {count_range!r}")
        if count_range[0] > count_range[1]:
            raise InputError(f"count_range {tuple(count_range)} is empty (low > high); give (low, high) with low <= high")
    n = len(paragraphs)
    keep = torch.ones(n, dtype=torch.bool)
    dropped: dict[str, int] = {}

    def apply(name: str, passes: torch.Tensor) -> None:
        nonlocal keep
        dropped[name] = int((keep & ~passes).sum())
        keep = keep & passes

    counts = paragraphs.metadata.get("count")
    if (drop_zero_count or count_range is not None) and counts is None:
        raise InputError("the count filters need a 'count' column (read_carlini_arrays(prompts, counts)); "
                         "pass drop_zero_count=False and count_range=None to filter without counts")
    count_t = torch.tensor([int(c) for c in counts]) if counts is not None else None
    if drop_zero_count:
        apply("count_zero", count_t > 0)
    if min_unique_share > 0:
        length = paragraphs.tokens.shape[1]
        unique = torch.tensor([len(torch.unique(row)) for row in paragraphs.tokens])
        apply("few_unique_tokens", unique > int(min_unique_share * length))
    if keywords:
        if tokenize is None:
            raise InputError("keyword filtering needs tokenize= (text -> token ids), e.g. from the model")
        sets = []
        for variant in keyword_variants(keywords):
            ids = {int(t) for t in tokenize(variant)} - ({eos_token_id} if eos_token_id is not None else set())
            if ids:
                sets.append(ids)
        token_sets = [set(row.tolist()) for row in paragraphs.tokens]
        apply("keywords", torch.tensor([not any(s <= ts for s in sets) for ts in token_sets], dtype=torch.bool))
    if drop_eos and eos_token_id is not None:
        apply("eos_token", ~(paragraphs.tokens == eos_token_id).any(dim=1))
    if count_range is not None:
        low, high = count_range
        apply("count_range", (count_t >= low) & (count_t <= high))
    return FilterReport(paragraphs=paragraphs.filter(keep), dropped=dropped, n_before=n)


def read_token_tensor(path: str | Path, prefix_len: int = DEFAULT_PREFIX_LEN,
                      length: int = DEFAULT_PREFIX_LEN + DEFAULT_CONTINUATION_LEN) -> ParagraphSet:
    """A token tensor released with the official code (``paragraphs/gpt-neo-125M/preds/*.pt``:
    prefix + the model's greedy continuation; ``perturbed/*.pt``: the PMPs and their originals),
    read safely (``torch.load(weights_only=True)``: no code runs) and checked to be ``[N, length]``
    integer ids.

    Returns:
        Paragraphs with ids ``"0".."N-1"`` (their row) split at ``prefix_len``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # an unpickling refusal, a damaged zip, not a torch file
        raise InputError(f"{path}: not a plain torch tensor file that loads with weights_only=True "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(obj, torch.Tensor):
        raise InputError(f"{path}: holds a {type(obj).__name__}, not a tensor of token ids")
    if obj.layout != torch.strided:
        raise InputError(f"{path}: holds a {obj.layout} tensor; save the token ids as a dense tensor (tensor.to_dense())")
    if obj.ndim != 2 or obj.shape[1] != length or obj.dtype.is_floating_point or obj.dtype.is_complex \
            or obj.dtype == torch.bool:
        raise InputError(f"{path}: expected an [N, {length}] integer tensor of token ids, got shape "
                         f"{tuple(obj.shape)} and dtype {obj.dtype}")
    if obj.dtype == torch.uint64:
        too_big = obj.view(torch.int64) < 0  # the same bits: ids >= 2**63 read as negative
        if bool(too_big.any()):
            row, col = (int(i) for i in too_big.nonzero()[0])
            raise InputError(f"{path}: row {row}, position {col} holds a token id above 2**63 - 1; no vocabulary has "
                             "such ids (is this a token file?)")
    return ParagraphSet(obj.long(), prefix_len, length - prefix_len, [str(i) for i in range(len(obj))])
