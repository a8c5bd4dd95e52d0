"""The paper's Fig. 5: unlearning or editing one target per trial through several masks, kept as
distributions over trials (the trade-off frontiers over a grid of learning rates are in
:mod:`memlens.analyses.mask_tradeoff`)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from memlens.core.checkpoint import Checkpoint, model_identity, paragraph_fingerprint
from memlens.core.data import ParagraphSet
from memlens.core.errors import InputError
from memlens.core.results import Provenance, Result
from memlens.core.stats import bootstrap_mean_ci
from memlens.analyses.finetune import FineTuneSettings
from memlens.analyses.unlearn import SparseFineTuner, drop_targets
from memlens.core.precision import with_precision

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from memlens.core.model import HookedModel

#: the per-trial values a MaskTradeoff keeps for each trial
TRIAL_COLUMNS = ("target_em_before", "target_em_after", "retain_em_before", "retain_em_after")
#: the per-trial values whose mean gets a bootstrap 95% interval in :attr:`MaskComparison.rows`
CI_COLUMNS = ("target_em_after", "target_nll_after", "retain_em_after", "retain_nll_after", "other_memorized_em_after")


@dataclass(frozen=True, kw_only=True)
class MaskComparison(Result):
    """The paper's Fig. 5: per objective x mask, every trial's values and their means.

    Each trial fine-tunes one target from the original weights (restored in between) with its
    retain batch (the same batch for every mask of a trial: a paired comparison).

    Attributes:
        rows: one dict per (objective, mask): the mean over trials of ``mask_size, weights_changed,
            <set>_em_before, <set>_em_after, <set>_nll_before, <set>_nll_after, <set>_top1_changed``
            (sets: target, retain, other_memorized; for ``edit`` also ``target_em_new_after,
            target_edit_success``), ``n_trials``, and for :data:`CI_COLUMNS` a bootstrap 95%
            interval of the mean, ``<column>_ci_low`` / ``<column>_ci_high``.
        targets: the target paragraph ids (in trial order; a target repeats when there are more
            trials than targets).
        trials: one dict per (objective, mask, trial): the :meth:`FineTuneResult.summary` of that
            run, ``trial``, ``target`` and ``retain`` (its retain batch's ids).
    """

    rows: list[dict[str, Any]]
    targets: list[str]
    trials: list[dict[str, Any]] = field(default_factory=list)
    provenance: Provenance = field(default_factory=Provenance)

    def to_dataframe(self) -> "pd.DataFrame":
        """One row per (objective, mask): the means and intervals of :attr:`rows`."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    def trials_dataframe(self) -> "pd.DataFrame":
        """One row per (objective, mask, trial): :attr:`trials`."""
        import pandas as pd

        return pd.DataFrame(self.trials)

    def summary(self) -> dict[str, Any]:
        rows = [{k: (None if isinstance(v, float) and v != v else round(v, 3) if isinstance(v, float) else v)
                 for k, v in r.items()} for r in self.rows]
        return {"targets": list(self.targets), "table": rows}

    def row(self, objective: str, mask: str) -> dict[str, Any]:
        """The row of one objective and mask."""
        for r in self.rows:
            if r["objective"] == objective and r["mask"] == mask:
                return r
        raise InputError(f"no row for objective {objective!r} and mask {mask!r}")

    def values(self, objective: str, mask: str, column: str) -> list[float]:
        """``column`` of every trial of one objective and mask, in trial order."""
        vals = [t[column] for t in self.trials if t["objective"] == objective and t["mask"] == mask]
        if not vals:
            raise InputError(f"no trials for objective {objective!r} and mask {mask!r}")
        return vals

    def plot(self) -> "go.Figure":
        """Fig. 5 as distributions: box plots (every trial a point) of the EM and NLL after
        fine-tuning per objective/mask, for the targets and the retain batches; bars of the means
        when the trials were not kept (a file written before memlens kept them)."""
        from memlens.viz.unlearning import plot_mask_comparison

        return plot_mask_comparison(self)

def parse_decay(spec: str) -> tuple[str, float]:
    """A weight-decay grid entry as ``(decay_mode, weight_decay)``: ``none`` (no decay),
    ``coupled:<w>`` or ``decoupled:<w>`` (:data:`memlens.core.defaults.DECAY_MODES`)."""
    from memlens.core.defaults import DECAY_MODES

    if spec == "none":
        return "coupled", 0.0
    mode, _, value = str(spec).partition(":")
    try:
        w = float(value)
    except ValueError:
        w = float("nan")
    if mode not in DECAY_MODES or not (w == w and 0 <= w < float("inf")):
        raise InputError(f"weight decay {spec!r}: write none, coupled:<w> or decoupled:<w> with a finite w >= 0")
    return mode, w


def decay_label(settings: FineTuneSettings) -> str:
    """The grid label of a setting's decay: ``none``, ``coupled:<w>`` or ``decoupled:<w>``."""
    return "none" if settings.weight_decay == 0 else f"{settings.decay_mode}:{settings.weight_decay:g}"


def retain_batches(retain: ParagraphSet, n_trials: int, per_trial: int | None, seed: int = 0) -> list[ParagraphSet]:
    """The retain set of each trial: the whole ``retain`` set every time (``per_trial`` None), or
    a fresh batch of ``per_trial`` paragraphs per trial drawn from the pool ``retain`` without
    replacement (a new seeded shuffle of the pool each time it runs out; the official code's
    Fig. 5 design draws 10 per trial)."""
    if per_trial is None:
        return [retain] * n_trials
    if not 1 <= per_trial <= len(retain):
        raise InputError(f"retain_per_trial must be between 1 and the retain pool's size {len(retain)}, got {per_trial}")
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    batches = []
    for _ in range(n_trials):
        if len(order) < per_trial:  # the pass runs out: the rest of it, then a new shuffle without those
            fresh = [i for i in torch.randperm(len(retain), generator=g).tolist() if i not in order]
            order = order + fresh + order
        batches.append(retain[order[:per_trial]])
        order = order[per_trial:]
    return batches


@with_precision
def compare_masks(
    model: "HookedModel", targets: ParagraphSet, retain: ParagraphSet, other_memorized: ParagraphSet | None = None,
    objectives: Sequence[str] = ("unlearn",), masks: Sequence[str] = ("all", "topk", "random"),
    perturbed: ParagraphSet | None = None, *, settings: FineTuneSettings | None = None,
    lr: dict[str, float] | float | None = None, progress: bool = True, checkpoint: str | Path | None = None,
    n_trials: int | None = None, retain_per_trial: int | None = None, seed: int = 0,
    tuner: SparseFineTuner | None = None, fresh: bool = False, **changes: Any,
) -> MaskComparison:
    """The paper's Fig. 5: for each objective x mask, fine-tune one target per trial (weights
    restored in between) and score the target, its retain batch and the other memorized
    paragraphs; every trial is kept.

    Args:
        model: the model (its weights are restored after every run).
        targets: memorized paragraphs to unlearn or edit; trial ``t`` takes target ``t mod len(targets)``.
        retain: non-memorized paragraphs kept close to the original model (KL): the retain set of
            every trial, or with ``retain_per_trial`` the pool fresh batches are drawn from.
        other_memorized: memorized paragraphs that should stay recited (the target is left out).
        objectives: ``unlearn`` and/or ``edit``; ``edit`` needs ``perturbed`` (aligned with targets).
        masks: ``all``, ``topk``, ``selective`` (see :func:`selective_mask`), ``random``.
        perturbed: each target's perturbed paragraph (``PrefixPerturber.perturbed_paragraphs``).
        settings: the fine-tuning hyperparameters (:class:`FineTuneSettings`, e.g.
            ``FineTuneSettings.paper_code()``); trial ``t``'s random mask uses seed ``seed + t``.
        lr: a learning rate for every mask, or one per mask (``{"all": 1e-4, "topk": 1e-3}``);
            default: the settings'.
        progress: show a progress bar.
        checkpoint: a JSON-lines file each finished run is appended to; a later call with the
            same file and the same computation (model, weight form, precision, settings,
            paragraphs) skips the runs already there (an interrupted comparison resumes); one made
            by another computation is refused, naming what differs
            (:class:`memlens.core.checkpoint.Checkpoint`).
        fresh: start a checkpoint of another computation afresh instead of refusing it.
        n_trials: trials per objective and mask (default: one per target; the paper's code: 20).
        retain_per_trial: draw a fresh retain batch of this size per trial (the code's: 10); None
            keeps the whole ``retain`` set in every trial.
        seed: seed of the retain batches and (``seed + t``) of trial ``t``'s random mask.
        tuner: the :class:`SparseFineTuner` to run with (default: a new one); one tuner reused
            across calls keeps the greedy references and each trial's inputs (scores before,
            reference logits, the objective's gradient map), as :func:`mask_tradeoff` does.
        changes: any other setting of :class:`FineTuneSettings` by name (``steps=5``), on top of
            ``settings``.

    Returns:
        A :class:`MaskComparison` with every trial and the means with bootstrap 95% intervals.
    """
    import pandas as pd
    from memlens.core.progress import tqdm

    if len(targets) == 0:
        raise InputError("compare_masks needs at least one target paragraph")
    n_trials = len(targets) if n_trials is None else n_trials
    if not (isinstance(n_trials, int) and n_trials >= 1):
        raise InputError(f"n_trials must be an integer >= 1, got {n_trials!r}")
    for objective in objectives:
        if objective not in ("unlearn", "edit"):
            raise InputError(f"unknown objective {objective!r}; use 'unlearn' or 'edit'")
    if "edit" in objectives and perturbed is None:
        raise InputError("the edit objective needs perturbed= (e.g. PrefixPerturber.perturbed_paragraphs)")
    retain = drop_targets(retain, targets, "the retain pool")
    base = FineTuneSettings.resolve(settings, changes)
    if isinstance(lr, dict) and any(m not in lr for m in masks):
        raise InputError(f"lr gives no learning rate for mask(s) {[m for m in masks if m not in lr]}")
    per_mask = {m: base if lr is None else FineTuneSettings.resolve(base, {"lr": lr[m] if isinstance(lr, dict) else lr})
                for m in masks}
    batches = retain_batches(retain, n_trials, retain_per_trial, seed)
    if tuner is not None and tuner.model is not model:
        raise InputError("compare_masks: the tuner belongs to another model")
    ft = tuner if tuner is not None else SparseFineTuner(model, progress=False)
    # every mask of a trial in a row: the tuner prepares a trial once for all of them
    jobs = [(o, m, t) for o in objectives for t in range(n_trials) for m in masks]
    ckpt = None
    if checkpoint is not None:
        ckpt = Checkpoint(checkpoint, "compare_masks", model_identity(model) | {
            "objectives": list(objectives), "masks": list(masks), "settings": {m: per_mask[m].to_dict() for m in masks},
            "n_trials": n_trials, "retain_per_trial": retain_per_trial, "seed": seed,
            "targets": paragraph_fingerprint(targets), "retain": paragraph_fingerprint(retain),
            "other_memorized": paragraph_fingerprint(other_memorized), "perturbed": paragraph_fingerprint(perturbed)},
            fresh=fresh)
    done = {(str(k[0]), str(k[1]), int(k[2])): v for k, v in ckpt.load().items()} if ckpt is not None else {}
    trials = [done[job] for job in jobs if job in done]
    todo = [job for job in jobs if job not in done]
    if todo:  # every greedy reference the runs need, decoded in a few large batches
        ft.prepare_references(targets, *(batches[t] for t in sorted({t for _, _, t in todo})),
                              *([other_memorized] if other_memorized is not None and len(other_memorized) else []))
    for objective, mask, t in tqdm(todo, desc="fine-tuning runs", disable=not progress, initial=len(trials),
                                   total=len(jobs)):
        i = t % len(targets)
        others = None
        if other_memorized is not None:
            others = other_memorized.filter([pid != targets.ids[i] for pid in other_memorized.ids])
        common = dict(mask=mask, settings=per_mask[mask], seed=seed + t, other_memorized=others)
        with ft.restored(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if objective == "unlearn":
                r = ft.unlearn(targets[[i]], batches[t], **common)
            else:
                r = ft.edit(targets[[i]], batches[t], perturbed_paragraph=perturbed[[i]], **common)
        trials.append(r.summary() | {"trial": t, "target": targets.ids[i], "retain": list(batches[t].ids)})
        if ckpt is not None:
            ckpt.append((objective, mask, t), trials[-1])
    order = {(o, m, t): k for k, (o, m, t) in enumerate((o, m, t) for o in objectives for m in masks
                                                         for t in range(n_trials))}
    trials.sort(key=lambda r: order[(r["objective"], r["mask"], r["trial"])])
    return MaskComparison(rows=_mean_rows(pd.DataFrame(trials), ["objective", "mask"]),
                          targets=[targets.ids[t % len(targets)] for t in range(n_trials)], trials=trials,
                          provenance=Provenance.capture(model, objectives=list(objectives), masks=list(masks),
                                                        **(base.to_dict() | {"seed": seed, "lr": lr if lr is not None
                                                                             else base.lr}),
                                                        n_trials=n_trials, retain_per_trial=retain_per_trial))


def _mean_rows(trials: "pd.DataFrame", keys: list[str]) -> list[dict[str, Any]]:
    """Per group of ``keys``: the mean of every numeric column, ``n_trials`` and the bootstrap 95%
    interval of each of :data:`CI_COLUMNS` present."""
    rows = []
    numeric = [c for c in trials.select_dtypes("number").columns if c != "trial"]
    for key, group in trials.groupby(keys, sort=False):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        row |= {c: float(group[c].mean()) if group[c].notna().any() else float("nan") for c in numeric}
        row["n_trials"] = int(len(group))
        for c in CI_COLUMNS:
            if c in group:
                row[f"{c}_ci_low"], row[f"{c}_ci_high"] = bootstrap_mean_ci(group[c].tolist())
        rows.append(row)
    return rows


