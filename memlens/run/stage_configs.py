"""The settings of each built-in stage (a section of :class:`~memlens.run.config.RunConfig` and a
table of its TOML file): scan, gradients, perturb, heads, unlearn."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from memlens.core.defaults import AGGREGATIONS, FRACTION, KL_DIRECTIONS, KL_REDUCTIONS, MASK_KINDS, N_SAMPLES, \
    MIN_K, NOISE_REFERENCES, PATCH_POSITIONS, NOISE_SCALES, NON_MEMORIZED_MAX_EM, PATCH_KINDS, RANDOM_MASK_DRAWS, RANK_REDUCES, RANK_TIES, \
    RARE_SETUPS, RETAIN_DESIGNS, \
    STRATEGIES, WORST_TIES, one_of
from memlens.run.settings import StageConfig, _runtime

@dataclass(frozen=True, kw_only=True)
class ScanConfig(StageConfig):
    """Settings of :func:`memlens.scan`.

    Attributes:
        batch_size: paragraphs per forward pass (runtime).
        non_memorized_max_em: EM at or below which a paragraph is non-memorized (paper: 10).
        memorized_min_em: EM at or above which it is memorized (default: the whole continuation).
        min_k: the share of continuation tokens (those with the highest NLL) in the min-K% NLL
            column of every scan.
    """

    section: ClassVar[str] = "scan"
    batch_size: int = _runtime(16)
    non_memorized_max_em: int = NON_MEMORIZED_MAX_EM
    memorized_min_em: int | None = None
    min_k: float = MIN_K

    def scan_kwargs(self) -> dict[str, Any]:
        """The settings every scan engine (:func:`memlens.scan`, ``scan_to_table``, the Ray
        engine) takes: batch size, split thresholds, min-K share."""
        return dict(batch_size=self.batch_size, non_memorized_max_em=self.non_memorized_max_em,
                    memorized_min_em=self.memorized_min_em, min_k=self.min_k)

    def validate(self) -> None:
        self._positive_int("batch_size")
        self._require("non_memorized_max_em", isinstance(self.non_memorized_max_em, int) and self.non_memorized_max_em >= 0,
                      "must be an integer >= 0")
        self._require("min_k", isinstance(self.min_k, (int, float)) and not isinstance(self.min_k, bool)
                      and 0 < self.min_k <= 1, "must be a share in (0, 1]")
        if self.memorized_min_em is not None:
            self._require("memorized_min_em", isinstance(self.memorized_min_em, int)
                          and self.memorized_min_em > self.non_memorized_max_em,
                          "must be an integer above non_memorized_max_em")


@dataclass(frozen=True, kw_only=True)
class GradientsConfig(StageConfig):
    """Settings of the gradient stage (:class:`memlens.GradientMap`).

    Attributes:
        max_paragraphs: memorized and non-memorized paragraphs mapped (at most, each).
        aggregation: component score: ``max`` (the paper's), ``l1``, ``l2`` or ``mean``.
        max_per_em_bin: paragraphs per EM range in the profiles by EM (the paper's Fig. 9).
        similarity: also map the cosine similarity of memorized vs non-memorized gradients per
            component (:class:`memlens.GradientSimilarity`, the code's cosine notebook).
        batch_size: paragraphs per backward pass (runtime).
    """

    section: ClassVar[str] = "gradients"
    max_paragraphs: int = 32
    aggregation: str = "max"
    max_per_em_bin: int = 32
    similarity: bool = True
    batch_size: int = _runtime(8)

    def validate(self) -> None:
        self._positive_int("max_paragraphs", "max_per_em_bin", "batch_size")
        self._require("aggregation", self.aggregation in AGGREGATIONS, f"must be {one_of(AGGREGATIONS)}")


@dataclass(frozen=True, kw_only=True)
class PerturbConfig(StageConfig):
    """Settings of the perturbation stage (:class:`memlens.PrefixPerturber`).

    Attributes:
        max_paragraphs: memorized and non-memorized paragraphs swept (at most, each).
        n_samples: replacements per prefix position.
        strategy: ``random``, ``second_best``, ``similar`` or ``cumulative``.
        skip_position_0: never perturb prefix position 0 (the official code's).
        allow_original: random replacements may draw the original token (the code's).
        worst_ties: which equally damaging perturbation is a paragraph's worst: ``nll`` (the
            higher NLL) or ``earliest`` (the earliest position, the code's).
        batch_size: perturbed paragraphs per forward pass (runtime).
    """

    section: ClassVar[str] = "perturb"
    max_paragraphs: int = 16
    n_samples: int = N_SAMPLES
    strategy: str = "random"
    skip_position_0: bool = False
    allow_original: bool = False
    worst_ties: str = "nll"
    batch_size: int = _runtime(64)

    def validate(self) -> None:
        self._positive_int("max_paragraphs", "n_samples", "batch_size")
        self._require("strategy", self.strategy in STRATEGIES, f"must be {one_of(STRATEGIES)}")
        self._require("worst_ties", self.worst_ties in WORST_TIES, f"must be {one_of(WORST_TIES)}")
        for name in ("skip_position_0", "allow_original"):
            self._require(name, isinstance(getattr(self, name), bool), "must be true or false")


@dataclass(frozen=True, kw_only=True)
class HeadsConfig(StageConfig):
    """Settings of the head stage (:class:`memlens.HeadLocalizer`).

    Attributes:
        max_paragraphs: memorized paragraphs analysed (at most).
        causal_share: weight of activation patching in the combined rank, relative to the
            other evidence kinds together (0.5: as much as all of them).
        patch_kinds: activations patched per head (``z``, ``q``, ``k``, ``v``).
        ablation: also measure each head's zero-ablation EM drop (causal ground truth).
        exact_top: 0: patch every head exactly; n: screen every head with attribution patching
            and patch exactly (and ablate) only the n it ranks highest (models with many heads).
        rare_setup: the rare-token evidence's paragraphs: ``memorized`` (the analysed memorized
            paragraphs, counts from the model's corpus where known) or ``paper`` (also the paper's
            Fig. 7 on its own: the first ``rare_paragraphs`` of memorized + non-memorized, counts
            over both -> ``rare_attention.safetensors``).
        rare_paragraphs: paragraphs of the ``paper`` setup (the paper's 1,000).
        rare_ranks: ``ordinal`` or ``dense`` (the paper's) rarity ranks of the ``paper`` setup.
        rare_reduce: ``mean`` or ``sum`` (the paper's) of attention per rank over paragraphs.
        patch_positions: ``all`` positions of a head are patched, or only the ``perturbed`` one(s)
            (the paper's Appendix A.3).
        pair_gradients: also the activation gradients of each memorized paragraph and its
            perturbed version at the perturbed and the first changed token (the paper's Fig. 10).
        view_paragraphs: memorized paragraphs in the top head's attention views (the paper's
            Fig. 6 bottom / Fig. 12); 0: none.
        batch_size: paragraphs per pass (runtime).
    """

    section: ClassVar[str] = "heads"
    max_paragraphs: int = 16
    causal_share: float = 0.5
    patch_kinds: tuple[str, ...] = PATCH_KINDS
    ablation: bool = True
    exact_top: int = 0
    rare_setup: str = "memorized"
    rare_paragraphs: int = 1000
    rare_ranks: str = "ordinal"
    rare_reduce: str = "mean"
    view_paragraphs: int = 8
    patch_positions: str = "all"
    pair_gradients: bool = True
    batch_size: int = _runtime(8)

    def validate(self) -> None:
        self._positive_int("max_paragraphs", "batch_size", "rare_paragraphs")
        self._require("view_paragraphs", isinstance(self.view_paragraphs, int) and not isinstance(self.view_paragraphs, bool)
                      and self.view_paragraphs >= 0, "must be an integer >= 0")
        for name, options in (("rare_setup", RARE_SETUPS), ("rare_ranks", RANK_TIES), ("rare_reduce", RANK_REDUCES),
                              ("patch_positions", PATCH_POSITIONS)):
            self._require(name, getattr(self, name) in options, f"must be {one_of(options)}")
        self._require("exact_top", isinstance(self.exact_top, int) and self.exact_top >= 0, "must be an integer >= 0")
        self._require("causal_share", isinstance(self.causal_share, (int, float)) and 0 <= self.causal_share < 1,
                      "must be in [0, 1)")
        self._require("patch_kinds", bool(self.patch_kinds) and set(self.patch_kinds) <= set(PATCH_KINDS),
                      f"must be a non-empty list of {one_of(PATCH_KINDS)}")


@dataclass(frozen=True, kw_only=True)
class UnlearnConfig(StageConfig):
    """Settings of the unlearning stage (:class:`memlens.SparseFineTuner`, :func:`memlens.compare_masks`).

    Attributes:
        n_targets: trials per mask: each fine-tunes one memorized paragraph from the original
            weights (restored in between); targets repeat when fewer are memorized (paper: 20).
        retain_paragraphs: non-memorized paragraphs in each trial's KL retain set (paper: 10).
        retain_design: ``fixed`` = the same retain set in every trial; ``fresh`` = a fresh batch
            per trial drawn from every non-memorized paragraph of the scan (the code's design).
        fraction: share of the trainable weights a sparse mask selects (paper: 0.001).
        masks: masks compared: ``all``, ``topk``, ``selective``, ``random``.
        steps, lr: Adam steps and learning rate of unlearning (code: 5 at 1e-5; the paper's text: 10).
        weight_decay: Adam's coupled L2 decay, on the masked weights only (code: 1.0).
        kl_weight: weight of the retain KL term.
        nll_scale: weight of the target's NLL term (code: 0.1).
        kl_direction: ``model||original`` (the paper's formula) or ``original||model`` (the code's).
        kl_reduction: ``mean`` over positions or ``batchmean`` (summed over positions; the code's).
        random_mask: ``exact`` (the top-k count) or ``bernoulli`` (the code's draw).
        selectivity_floor: quantile of the retain sensitivity added before division (selective).
        tradeoff_lrs: learning rates of the trade-off curves (target vs retain EM per mask); empty:
            none drawn.
        edit: also edit each target to its perturbed continuation (needs the perturb stage).
        edit_masks: masks compared for editing.
        edit_steps, edit_lr: Adam steps and learning rate of editing.
        noise_scales: the noise intervention's scales (factors of each parameter's std); empty:
            no noise intervention (the code's grid: ``PAPER_NOISE_SCALES``).
        noise_masks: masks noised (``topk``, ``selective``, ``random``; same size).
        noise_draws: noise draws per scale.
        noise_reference: ``greedy`` (the model's own continuation) or ``true`` (the code's).
    """

    section: ClassVar[str] = "unlearn"
    n_targets: int = 4
    retain_paragraphs: int = 16
    retain_design: str = "fixed"
    fraction: float = FRACTION
    masks: tuple[str, ...] = MASK_KINDS
    steps: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.0
    kl_weight: float = 1.0
    nll_scale: float = 1.0
    kl_direction: str = "model||original"
    kl_reduction: str = "mean"
    random_mask: str = "exact"
    selectivity_floor: float = 0.1
    tradeoff_lrs: tuple[float, ...] = ()
    edit: bool = True
    edit_masks: tuple[str, ...] = ("all", "topk", "random")
    edit_steps: int = 30
    edit_lr: float = 1e-2
    noise_scales: tuple[float, ...] = NOISE_SCALES
    noise_masks: tuple[str, ...] = ("topk", "selective", "random")
    noise_draws: int = 3
    noise_reference: str = "greedy"

    def validate(self) -> None:
        self._positive_int("n_targets", "retain_paragraphs", "steps", "edit_steps")
        self._positive_float("lr", "edit_lr", "fraction")
        self._require("fraction", self.fraction <= 1, "must be in (0, 1]")
        for name in ("kl_weight", "nll_scale", "weight_decay"):
            v = getattr(self, name)
            self._require(name, isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0,
                          "must be a finite number >= 0")
        self._require("selectivity_floor", isinstance(self.selectivity_floor, (int, float)) and 0 < self.selectivity_floor <= 1,
                      "must be in (0, 1]")
        for name, options in (("retain_design", RETAIN_DESIGNS), ("kl_direction", KL_DIRECTIONS),
                              ("kl_reduction", KL_REDUCTIONS), ("random_mask", RANDOM_MASK_DRAWS)):
            self._require(name, getattr(self, name) in options, f"must be {one_of(options)}")
        self._require("tradeoff_lrs", all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                                          and x > 0 for x in self.tradeoff_lrs), "must be a list of numbers > 0")
        for name in ("masks", "edit_masks"):
            self._require(name, bool(getattr(self, name)) and set(getattr(self, name)) <= set(MASK_KINDS),
                          f"must be a non-empty list of {one_of(MASK_KINDS)}")
        self._require("noise_scales", all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                                          and x >= 0 for x in self.noise_scales), "must be a list of numbers >= 0")
        sparse = tuple(k for k in MASK_KINDS if k != "all")
        self._require("noise_masks", bool(self.noise_masks) and set(self.noise_masks) <= set(sparse),
                      f"must be a non-empty list of {one_of(sparse)}")
        self._positive_int("noise_draws")
        self._require("noise_reference", self.noise_reference in NOISE_REFERENCES, f"must be {one_of(NOISE_REFERENCES)}")

    def retain_set(self, non_memorized: Any) -> Any:
        """The ``retain`` argument of :func:`memlens.compare_masks` for these settings: every
        non-memorized paragraph (the pool fresh batches are drawn from) or the first
        ``retain_paragraphs`` (``fixed``)."""
        return non_memorized if self.retain_design == "fresh" else non_memorized[: self.retain_paragraphs]

    def compare_kwargs(self, seed: int = 0) -> dict[str, Any]:
        """The settings of :func:`memlens.compare_masks` (and :func:`memlens.mask_tradeoff`) these
        stand for, other than the steps and learning rate (unlearning's or editing's); the unlearn
        stage and benchmarks/paper_fig5.py both use it, with :meth:`retain_set`."""
        return dict(fraction=self.fraction, kl_weight=self.kl_weight, selectivity_floor=self.selectivity_floor,
                    n_trials=self.n_targets, retain_per_trial=self.retain_paragraphs if self.retain_design == "fresh" else None,
                    seed=seed, nll_scale=self.nll_scale, kl_direction=self.kl_direction,
                    kl_reduction=self.kl_reduction, weight_decay=self.weight_decay, random_mask=self.random_mask)


#: section name -> settings class: the built-in stages' and every one a Stage row registers
