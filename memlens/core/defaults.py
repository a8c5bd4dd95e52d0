"""The one place where memlens's defaults and option lists are written.

Configs (:mod:`memlens.run.config`), analysis signatures and the command line's help text all read
these; the paper's values are named where memlens follows them.
"""

from __future__ import annotations

from typing import Literal, get_args

#: tokens of a paragraph's prefix and of its continuation (the paper's 50 + 50)
DEFAULT_PREFIX_LEN = 50
DEFAULT_CONTINUATION_LEN = 50
#: EM (tokens) at or below which a paragraph is non-memorized (the paper's 10).
NON_MEMORIZED_MAX_EM = 10
#: share of the trainable weights a sparse mask selects (the paper's 0.1%).
FRACTION = 0.001
#: quantile of the retain sensitivity added before division in a selective mask
#: (:func:`memlens.selective_mask`)
SELECTIVITY_FLOOR = 0.1
#: replacement tokens drawn per prefix position by a perturbation sweep.
N_SAMPLES = 4
#: the share of continuation tokens, those with the highest NLL, whose mean NLL is a scan's min-K%
#: column (Min-K% Prob, Shi et al. 2023; the paper's code explores K = 20%).
MIN_K = 0.2

MaskKind = Literal["all", "topk", "selective", "random"]
#: the masks of sparse fine-tuning: every weight, the top fraction by |gradient|, the top
#: fraction by |gradient| relative to the retain set's sensitivity, a random fraction.
MASK_KINDS: tuple[MaskKind, ...] = get_args(MaskKind)

Strategy = Literal["random", "second_best", "similar", "cumulative"]
#: how a perturbation picks replacement tokens.
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)

WorstTies = Literal["nll", "earliest"]
#: which of several equally damaging perturbations is a paragraph's worst: ``nll`` = the one with
#: the higher NLL, then the earlier position (memlens's default); ``earliest`` = the earliest
#: position (the official code's strict ``em < min_em`` over positions in order).
WORST_TIES: tuple[WorstTies, ...] = get_args(WorstTies)

RankTies = Literal["ordinal", "dense"]
#: how prefix tokens with equal corpus counts are ranked by rarity: ``ordinal`` = ranks 0..P-1,
#: earlier position first (memlens's default); ``dense`` = equal counts share a rank, no gaps (the
#: official code's ``rankdata(method="dense") - 1``).
RANK_TIES: tuple[RankTies, ...] = get_args(RankTies)

RankReduce = Literal["mean", "sum"]
#: how attention per rarity rank is pooled over paragraphs: ``mean`` (memlens's default) or ``sum``
#: (the paper's Fig. 7: "attention on tokens over 1000 paragraphs").
RANK_REDUCES: tuple[RankReduce, ...] = get_args(RankReduce)

RareSetup = Literal["memorized", "paper"]
#: the rare-token analysis's inputs: ``memorized`` paragraphs only (memlens's), or ``paper`` =
#: 1,000 paragraphs of memorized + non-memorized with counts over both (the paper's Fig. 7).
RARE_SETUPS: tuple[RareSetup, ...] = get_args(RareSetup)

Aggregation = Literal["max", "l1", "l2", "mean"]
#: how a component's weight gradients become one score (``max``: the paper's).
AGGREGATIONS: tuple[Aggregation, ...] = get_args(Aggregation)

KLDirection = Literal["model||original", "original||model"]
#: the direction of the retain term's KL: ``model||original`` = KL(p_theta || p_theta0), the paper's
#: written formula (memlens's default); ``original||model`` = KL(p_theta0 || p_theta), what the
#: official code computes (torch ``KLDivLoss`` of the model's log-softmax against the frozen model's
#: softmax).
KL_DIRECTIONS: tuple[KLDirection, ...] = get_args(KLDirection)

KLReduction = Literal["mean", "batchmean"]
#: how the retain term's per-position KLs become one number: ``mean`` over paragraphs and
#: positions (memlens's default), or ``batchmean`` = summed over positions, averaged over
#: paragraphs (torch ``KLDivLoss(reduction="batchmean")`` on ``[batch, positions, vocab]``, the code's).
KL_REDUCTIONS: tuple[KLReduction, ...] = get_args(KLReduction)

RandomMaskDraw = Literal["exact", "bernoulli"]
#: how a random mask is drawn: ``exact`` = exactly the top-k mask's count, uniformly over the
#: trainable weights (memlens's default); ``bernoulli`` = each weight kept independently with
#: probability ``fraction`` (the official code's ``torch.bernoulli`` per tensor).
RANDOM_MASK_DRAWS: tuple[RandomMaskDraw, ...] = get_args(RandomMaskDraw)

DecayMode = Literal["coupled", "decoupled"]
#: how fine-tuning's weight decay acts: ``coupled`` = L2 added to the gradient before Adam's
#: moments (torch ``Adam(weight_decay=...)``, the official code's), ``decoupled`` = the weights
#: shrink by lr x decay after each step (``AdamW``, Loshchilov & Hutter 2019)
DECAY_MODES: tuple[DecayMode, ...] = get_args(DecayMode)

ForgetLoss = Literal["nll", "npo"]
#: the forget term of unlearning: ``nll`` = -nll_scale x NLL of the target (the paper's gradient
#: ascent), ``npo`` = negative preference optimization (Zhang et al. 2024; beta ``npo_beta``)
FORGET_LOSSES: tuple[ForgetLoss, ...] = get_args(ForgetLoss)

RetainDesign = Literal["fixed", "fresh"]
#: which non-memorized paragraphs keep the model in place in each fine-tuning trial: ``fixed`` = the
#: same retain set for every target (memlens's default), ``fresh`` = a fresh batch drawn from the
#: non-memorized pool for each trial (the official code's Fig. 5 design: 1 target + 10 NMPs).
RETAIN_DESIGNS: tuple[RetainDesign, ...] = get_args(RetainDesign)

WeightsForm = Literal["raw", "processed"]
#: the coordinates gradients and fine-tuning see: ``raw`` HuggingFace weights (memlens's default) or
#: ``processed`` = TransformerLens's default processing (LayerNorm folded, writing weights centred,
#: value biases folded), as the paper's code loaded GPT-Neo.
WEIGHTS_FORMS: tuple[WeightsForm, ...] = get_args(WeightsForm)

Precision = Literal["fp32", "bf16-mixed"]
#: how forward and backward passes compute: ``fp32`` (memlens's default, exact) or ``bf16-mixed``:
#: float32 master weights, matmuls under autocast in bfloat16 on the model's device, losses, softmax
#: statistics, EM/NLL comparisons and optimizer updates in float32 (docs/precision.md).
PRECISIONS: tuple[Precision, ...] = get_args(Precision)

NoiseRelativeTo = Literal["parameter_std", "absolute"]
#: what a noise-intervention scale multiplies: the standard deviation of each parameter tensor (the
#: official code's ``torch.std(param) * std_fac``) or 1 (the scale is the noise's std itself).
NOISE_RELATIVE_TO: tuple[NoiseRelativeTo, ...] = get_args(NoiseRelativeTo)

NoiseReference = Literal["greedy", "true"]
#: what the noise intervention's EM and NLL are measured against: the unperturbed model's greedy
#: continuation (memlens's default, as in unlearning) or the paragraph's true continuation (the code's).
NOISE_REFERENCES: tuple[NoiseReference, ...] = get_args(NoiseReference)

#: the official code's noise grid, ``torch.linspace(0.0, 0.0075, 6)`` (factors of each parameter's std)
PAPER_NOISE_SCALES: tuple[float, ...] = (0.0, 0.0015, 0.003, 0.0045, 0.006, 0.0075)
#: memlens's default noise grid (factors of each parameter's std): wide enough that 0.1% of the
#: weights breaks a memorized paragraph on the organisms (docs/editing-figures.md)
NOISE_SCALES: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)

PatchPositions = Literal["all", "perturbed"]
#: where a head is patched: at every position (memlens's default) or only at the perturbed prefix
#: position(s) (the paper's Appendix A.3).
PATCH_POSITIONS: tuple[PatchPositions, ...] = get_args(PatchPositions)

PatchKind = Literal["z", "q", "k", "v"]
#: the per-head activations activation patching swaps.
PATCH_KINDS: tuple[PatchKind, ...] = get_args(PatchKind)


def one_of(options: tuple[str, ...]) -> str:
    """``a, b or c``: an option list for help texts and error messages."""
    return options[0] if len(options) == 1 else ", ".join(options[:-1]) + f" or {options[-1]}"


#: the largest seed memlens accepts (torch and numpy take 64-bit seeds)
MAX_SEED = 2**63 - 1


#: what a seed must be
SEED_REQUIREMENT = "must be an integer from 0 to 2**63 - 1"


def seed_problem(seed: object) -> str | None:
    """:data:`SEED_REQUIREMENT`, or None for an integer from 0 to :data:`MAX_SEED`: the one check
    of a seed (the settings, the organism, fine-tuning)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        return SEED_REQUIREMENT
    return None


def check_seed(seed: object, where: str = "seed") -> int:
    """``seed`` if :func:`seed_problem` finds nothing; else a ValueError-derived
    :class:`~memlens.core.errors.InputError` saying so (before any work is done)."""
    from memlens.core.errors import InputError

    problem = seed_problem(seed)
    if problem is not None:
        raise InputError(f"{where} {seed!r}: {problem}")
    return seed


def distinct_list(name: str, values: object) -> list:
    """``values`` as a list, refusing a single value where a list belongs (``lrs=1e-3``,
    ``seeds=3``) and a value given twice (two equal seeds are not two independent draws), each with
    an :class:`~memlens.core.errors.InputError` naming ``name``."""
    from memlens.core.errors import InputError

    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple, range)):
        raise InputError(f"{name} must be a list of values (e.g. {name}=[{values!r}]), got {type(values).__name__} "
                         f"{values!r}")
    seen: list = []
    for v in values:
        if v in seen:
            raise InputError(f"{name} holds {v!r} twice; each value counts as an independent point of the design, "
                             "give each once")
        seen.append(v)
    return list(values)
