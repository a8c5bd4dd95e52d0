"""Named starting points of a run's settings: ``memlens run --preset NAME``, ``RunConfig.from_preset``.

``paper``: every setting the paper (arXiv 2403.19851) or its official code fixes, at their value;
docs/paper-fidelity.md gives the source of each beside memlens's default.
"""

from __future__ import annotations

from typing import Any

from memlens.analyses.finetune import FineTuneSettings
from memlens.core.defaults import NON_MEMORIZED_MAX_EM, PAPER_NOISE_SCALES

#: The paper's values of every setting it (or its official code, where the text is silent or
#: differs) fixes; docs/paper-fidelity.md gives the source of each and memlens's default beside it.
PAPER_SETTINGS: dict[str, Any] = {
    # the code loads GPT-Neo with HookedTransformer.from_pretrained's default weight processing
    "weights": "processed",
    # Section 3: memorized = EM 50 of 50 greedy tokens, non-memorized = EM <= 10
    "scan.memorized_min_em": 50, "scan.non_memorized_max_em": NON_MEMORIZED_MAX_EM,
    # Section 5.1: 50 paragraphs per set, max |gradient| per component
    "gradients.max_paragraphs": 50, "gradients.aggregation": "max",
    # Section 4 / token pertubation notebooks: one random token per position, position 0 kept,
    # torch.randint over the whole vocabulary, the earliest worst position
    "perturb.max_paragraphs": 50, "perturb.n_samples": 1, "perturb.strategy": "random",
    "perturb.skip_position_0": True, "perturb.allow_original": True, "perturb.worst_ties": "earliest",
    # Section 6 / rare token hypothesis notebook: 1,000 paragraphs of memorized + non-memorized,
    # counts over both, dense ranks with ties, attention summed over paragraphs
    "rare_attention.enabled": True, "rare_attention.paragraphs": 1000, "rare_attention.ranks": "dense",
    "rare_attention.reduce": "sum",
    # Appendix A.3: a head is patched at the perturbed position; NLL of the first changed token
    "heads.patch_positions": "perturbed",
    # Section 5.3 / fine-tuning.ipynb: 20 trials of 1 memorized + a fresh batch of 10 non-memorized
    # paragraphs; Adam lr 1e-5, coupled weight decay 1.0, 5 steps (the text says 10); 0.1 x NLL +
    # KLDivLoss(batchmean)(log p_theta, p_theta0); top 0.1% / Bernoulli random 0.1% / all weights
    "unlearn.n_targets": 20, "unlearn.retain_paragraphs": 10, "unlearn.retain_design": "fresh",
    "unlearn.fraction": 0.001, "unlearn.masks": ["all", "topk", "random"], "unlearn.kl_weight": 1.0,
    **{f"unlearn.{k}": v for k, v in FineTuneSettings.PAPER_CODE.items()},
    "unlearn.edit_masks": ["all", "topk", "random"], "unlearn.edit_steps": FineTuneSettings.PAPER_CODE["steps"],
    "unlearn.edit_lr": FineTuneSettings.PAPER_CODE["lr"],
    # memlens's addition: the masks compared at equal forgetting over a small lr grid
    "tradeoff.lrs": [1e-5, 1e-4, 1e-3, 1e-2],
    # noise intervention.ipynb: Gaussian noise, std = factor x std(parameter), factors
    # linspace(0, 0.0075, 6), on the top 0.1% weights (and a random 0.1% as the baseline); EM and
    # NLL against the true continuation
    "noise.scales": list(PAPER_NOISE_SCALES), "noise.masks": ["topk", "random"], "noise.reference": "true",
}

#: named settings a run can start from (``memlens run --preset NAME``)
PRESETS: dict[str, dict[str, Any]] = {"paper": PAPER_SETTINGS}
