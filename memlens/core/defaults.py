"""The one place where memlens's defaults and option lists are written.

Configs (:mod:`memlens.run.config`), analysis signatures and the command line's help text all read
these; the paper's values are named where memlens follows them.
"""

from __future__ import annotations

from typing import Literal, get_args

#: EM (tokens) at or below which a paragraph is non-memorized (the paper's 10).
NON_MEMORIZED_MAX_EM = 10
#: share of the trainable weights a sparse mask selects (the paper's 0.1%).
FRACTION = 0.001
#: replacement tokens drawn per prefix position by a perturbation sweep.
N_SAMPLES = 4

MaskKind = Literal["all", "topk", "selective", "random"]
#: the masks of sparse fine-tuning: every weight, the top fraction by |gradient|, the top
#: fraction by |gradient| relative to the retain set's sensitivity, a random fraction.
MASK_KINDS: tuple[MaskKind, ...] = get_args(MaskKind)

Strategy = Literal["random", "second_best", "similar"]
#: how a perturbation picks replacement tokens.
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)

Aggregation = Literal["max", "l1", "l2", "mean"]
#: how a component's weight gradients become one score (``max``: the paper's).
AGGREGATIONS: tuple[Aggregation, ...] = get_args(Aggregation)

PatchKind = Literal["z", "q", "k", "v"]
#: the per-head activations activation patching swaps.
PATCH_KINDS: tuple[PatchKind, ...] = get_args(PatchKind)


def one_of(options: tuple[str, ...]) -> str:
    """``a, b or c``: an option list for help texts and error messages."""
    return options[0] if len(options) == 1 else ", ".join(options[:-1]) + f" or {options[-1]}"
