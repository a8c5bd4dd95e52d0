"""The paper's Fig. 5: unlearning or editing one target per trial through several masks, kept as
distributions over trials; and trade-off curves of those masks over a grid of learning rates."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from memlens.core.data import ParagraphSet
from memlens.core.errors import InputError
from memlens.core.results import Provenance, Result
from memlens.core.stats import bootstrap_mean_ci
from memlens.analyses.finetune import FineTuneSettings
from memlens.analyses.unlearn import SparseFineTuner, drop_targets

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from memlens.core.model import HookedModel

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

@dataclass(frozen=True, kw_only=True)
class MaskTradeoff(Result):
    """Masks compared at equal forgetting: mean target EM against mean retain EM after unlearning,
    one point per learning rate, one curve per mask.

    Attributes:
        rows: one dict per (mask, lr): ``mask, lr, n_trials`` and the means and bootstrap 95%
            intervals of :data:`CI_COLUMNS` (as in :attr:`MaskComparison.rows`).
    """

    rows: list[dict[str, Any]]
    provenance: Provenance = field(default_factory=Provenance)

    def to_dataframe(self) -> "pd.DataFrame":
        import pandas as pd

        return pd.DataFrame(self.rows)

    def summary(self) -> dict[str, Any]:
        keep = ("mask", "lr", "n_trials", "target_em_after", "retain_em_after", "target_em_after_ci_low",
                "target_em_after_ci_high", "retain_em_after_ci_low", "retain_em_after_ci_high")
        return {"table": [{k: (round(r[k], 3) if isinstance(r[k], float) and k != "lr" else r[k]) for k in keep if k in r}
                          for r in self.rows]}

    def plot(self) -> "go.Figure":
        """Retain EM after (y) against target EM after (x), one curve per mask over the learning
        rates, with 95% intervals as error bars: the better mask is higher at equal x."""
        from memlens.viz.unlearning import plot_tradeoff

        return plot_tradeoff(self)

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


def compare_masks(
    model: "HookedModel", targets: ParagraphSet, retain: ParagraphSet, other_memorized: ParagraphSet | None = None,
    objectives: Sequence[str] = ("unlearn",), masks: Sequence[str] = ("all", "topk", "random"),
    perturbed: ParagraphSet | None = None, *, settings: FineTuneSettings | None = None,
    lr: dict[str, float] | float | None = None, progress: bool = True, checkpoint: str | Path | None = None,
    n_trials: int | None = None, retain_per_trial: int | None = None, seed: int = 0, **changes: Any,
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
            same file skips the runs already there (an interrupted comparison resumes).
        n_trials: trials per objective and mask (default: one per target; the paper's code: 20).
        retain_per_trial: draw a fresh retain batch of this size per trial (the code's: 10); None
            keeps the whole ``retain`` set in every trial.
        seed: seed of the retain batches and (``seed + t``) of trial ``t``'s random mask.
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
    ft = SparseFineTuner(model, progress=False)
    jobs = [(o, m, t) for o in objectives for m in masks for t in range(n_trials)]
    done = _read_runs(Path(checkpoint)) if checkpoint is not None else {}
    trials = [done[job] for job in jobs if job in done]
    todo = [job for job in jobs if job not in done]
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
        if checkpoint is not None:
            with Path(checkpoint).open("a", encoding="utf-8") as f:
                f.write(json.dumps(trials[-1]) + "\n")
    order = {job: k for k, job in enumerate(jobs)}
    trials.sort(key=lambda r: order[(r["objective"], r["mask"], r["trial"])])
    return MaskComparison(rows=_mean_rows(pd.DataFrame(trials), ["objective", "mask"]),
                          targets=[targets.ids[t % len(targets)] for t in range(n_trials)], trials=trials,
                          provenance=Provenance.capture(model, objectives=list(objectives), masks=list(masks),
                                                        **(base.to_dict() | {"seed": seed, "lr": lr if lr is not None
                                                                             else base.lr}),
                                                        n_trials=n_trials, retain_per_trial=retain_per_trial))


def mask_tradeoff(
    model: "HookedModel", targets: ParagraphSet, retain: ParagraphSet, lrs: Sequence[float],
    masks: Sequence[str] = ("all", "topk", "random"), checkpoint: str | Path | None = None, **compare_kwargs: Any,
) -> MaskTradeoff:
    """Unlearning trade-off curves: :func:`compare_masks` (objective ``unlearn``) at each learning
    rate of ``lrs``, kept as the mean and 95% interval of target and retain EM per (mask, lr), so
    that masks are compared at equal forgetting rather than at one learning rate.

    Args:
        model, targets, retain, masks: as for :func:`compare_masks`.
        lrs: the learning-rate grid.
        checkpoint: a JSON-lines file per learning rate is written beside this path (``<path>.lr<lr>``).
        compare_kwargs: any other setting of :func:`compare_masks` (steps, n_trials,
            retain_per_trial, the objective's form, ...).
    """
    if not lrs:
        raise InputError("mask_tradeoff needs at least one learning rate")
    rows: list[dict[str, Any]] = []
    for lr in lrs:
        ckpt = None if checkpoint is None else Path(f"{checkpoint}.lr{lr:g}")
        table = compare_masks(model, targets, retain, objectives=("unlearn",), masks=masks, lr=lr, checkpoint=ckpt,
                              **compare_kwargs)
        rows += [{"lr": float(lr)} | {k: v for k, v in r.items() if k != "objective"} for r in table.rows]
        if ckpt is not None:
            ckpt.unlink(missing_ok=True)
    return MaskTradeoff(rows=rows, provenance=Provenance.capture(model, lrs=[float(x) for x in lrs], masks=list(masks),
                                                                **{k: v for k, v in compare_kwargs.items()
                                                                   if k not in ("progress", "other_memorized", "perturbed")}))


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


def _read_runs(path: Path) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Finished runs of an interrupted :func:`compare_masks`, by (objective, mask, trial); a torn
    last line is dropped."""
    if not path.exists():
        return {}
    runs = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            runs[(row["objective"], row["mask"], int(row["trial"]))] = row
        except (ValueError, RecursionError, TypeError, KeyError):
            continue  # a torn or damaged line: that run is done again
    return runs
