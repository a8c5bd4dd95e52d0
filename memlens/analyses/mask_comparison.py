"""The paper's Fig. 5: unlearning or editing one target per trial through several masks, kept as
distributions over trials; and trade-off curves of those masks over a grid of learning rates."""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from memlens.core.checkpoint import Checkpoint, model_identity, paragraph_fingerprint
from memlens.core.data import ParagraphSet
from memlens.core.defaults import distinct_list
from memlens.core.errors import InputError
from memlens.core.results import Provenance, Result, check_same_model
from memlens.core.stats import bootstrap_mean_ci
from memlens.analyses.finetune import FineTuneSettings, finetune_problem
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

@dataclass(frozen=True, kw_only=True)
class MaskTradeoff(Result):
    """Masks compared at equal forgetting: target EM against retain EM after unlearning over a
    grid of learning rates x steps x weight decays, every grid point run with several seeds.

    Attributes:
        rows: one dict per (mask, grid point, seed): ``mask, lr, steps, decay`` (``none``,
            ``coupled:<w>`` or ``decoupled:<w>``), ``seed``, ``n_trials`` and the trial means of
            :data:`CI_COLUMNS` (with bootstrap 95% intervals over the trials) and of
            ``target_em_before`` / ``retain_em_before``, ``seconds``, ``optimizer_seconds``.
        trials: one dict per (mask, grid point, seed, trial): ``target`` (the paragraph id) and
            its target / retain EM before and after, so that :meth:`retain_at` can resample the
            targets (empty in files written before memlens kept them).
    """

    rows: list[dict[str, Any]]
    trials: list[dict[str, Any]] = field(default_factory=list)
    provenance: Provenance = field(default_factory=Provenance)

    def to_dataframe(self) -> "pd.DataFrame":
        import pandas as pd

        return pd.DataFrame(self.rows)

    @property
    def masks(self) -> list[str]:
        return list(dict.fromkeys(r["mask"] for r in self.rows))

    @classmethod
    def concat(cls, parts: Any) -> "MaskTradeoff":
        """One trade-off from a grid measured in parts (e.g. learning rates added in a later run):
        the rows of every part, the first part's provenance with the grid lists merged. The parts
        must come from one model and one design (the provenance settings other than the grid lists
        are equal); a (mask, grid point, seed) measured in two parts is refused."""
        if not isinstance(parts, (list, tuple)):
            raise InputError(f"MaskTradeoff.concat takes a list of MaskTradeoff parts, got {type(parts).__name__}")
        bad = [i for i, part in enumerate(parts) if not isinstance(part, MaskTradeoff)]
        if bad:
            raise InputError(f"MaskTradeoff.concat: part {bad[0]} is a {type(parts[bad[0]]).__name__}, not a MaskTradeoff "
                             "(load saved parts with MaskTradeoff.load)")
        if not parts:
            raise InputError("MaskTradeoff.concat needs at least one part")
        grid_keys = ("lrs", "steps", "decays", "seeds", "masks")
        first = parts[0].provenance
        design = {k: v for k, v in first.config.items() if k not in grid_keys}
        seen: dict[tuple, int] = {}
        rows: list[dict[str, Any]] = []
        trials: list[dict[str, Any]] = []
        for i, part in enumerate(parts):
            check_same_model(first.model, part.provenance.model, "trade-off parts")
            if part.provenance.precision != first.precision:
                raise InputError(f"trade-off part {i} was computed at precision {part.provenance.precision}, part 0 at "
                                 f"{first.precision}; join parts of one precision")
            other = {k: v for k, v in part.provenance.config.items() if k not in grid_keys}
            if other != design:
                diff = sorted(k for k in set(design) | set(other) if design.get(k) != other.get(k))
                raise InputError(f"trade-off part {i} was run with other settings than part 0 ({', '.join(diff)}); "
                                 f"only the grid ({', '.join(grid_keys)}) may differ between parts")
            for r in part.rows:
                key = _point_key(r) + (r["seed"],)
                if key in seen:
                    raise InputError(f"trade-off parts {seen[key]} and {i} both measured mask {key[0]!r} at lr {key[1]:g}, "
                                     f"{key[2]} steps, decay {key[3]}, seed {key[4]}; drop it from one part")
                seen[key] = i
                rows.append(r)
            trials += part.trials
        config = dict(first.config)
        for k in grid_keys:
            merged = [v for part in parts for v in part.provenance.config.get(k, [])]
            if merged:
                config[k] = _grid_sorted(set(merged))
        if any(not part.trials for part in parts):
            trials = []  # a part without per-trial rows: the joined grid cannot resample targets
        return cls(rows=rows, trials=trials, provenance=dataclasses.replace(first, config=config))

    def points(self, mask: str | None = None) -> list[dict[str, Any]]:
        """Per (mask, lr, steps, decay): ``target_em_after`` and ``retain_em_after`` averaged over
        seeds, each with a bootstrap 95% interval over the seeds (``_ci_low`` / ``_ci_high``), and
        ``n_seeds``."""
        out = []
        rows = [r for r in self.rows if mask is None or r["mask"] == mask]
        for key in dict.fromkeys(_point_key(r) for r in rows):
            group = [r for r in rows if _point_key(r) == key]
            p: dict[str, Any] = dict(zip(("mask", "lr", "steps", "decay"), key)) | {"n_seeds": len(group)}
            for c in ("target_em_after", "retain_em_after"):
                vals = [r[c] for r in group]
                p[c] = sum(vals) / len(vals)
                p[f"{c}_ci_low"], p[f"{c}_ci_high"] = bootstrap_mean_ci(vals)
            out.append(p)
        return out

    def frontier(self, mask: str) -> list[dict[str, Any]]:
        """The Pareto frontier of ``mask`` over the grid (seed means): the points no other point
        beats on both forgetting (lower target EM) and sparing (higher retain EM), by target EM."""
        if mask not in self.masks:
            raise InputError(f"no mask {mask!r} in this trade-off; it has {', '.join(self.masks)}")
        return _pareto(self.points(mask))

    def retain_at(self, target_em: Any = 25.0, over: str = "seeds") -> dict[str, dict[str, float]]:
        """Per mask: the retain EM its frontier keeps at target EM ``target_em``, read off each
        unit's frontier by linear interpolation (the untouched model, target and retain EM before,
        is a frontier point too), as the mean over the units with a bootstrap 95% interval; NaN when
        some unit's grid does not forget that far.

        Args:
            target_em: the target EM (tokens) the masks are compared at.
            over: the units resampled: ``seeds`` (each seed's frontier of trial means) or
                ``targets`` (each (seed, target paragraph)'s own frontier: the interval then covers
                which paragraphs were drawn, not only the retain batches and random masks).
        """
        if isinstance(target_em, bool) or not isinstance(target_em, (int, float)) or not math.isfinite(target_em):
            raise InputError(f"retain_at takes a target EM (a finite number of tokens, e.g. 25.0), got {target_em!r}")
        if over not in ("seeds", "targets"):
            raise InputError(f"over must be 'seeds' or 'targets', got {over!r}")
        if over == "targets" and not self.trials:
            raise InputError("this trade-off kept no per-trial rows (written before memlens kept them); resample "
                             "over='seeds'")
        out = {}
        for mask in self.masks:
            rows = self.rows if over == "seeds" else self.trials
            units: dict[Any, list[dict[str, Any]]] = {}
            for r in rows:
                if r["mask"] == mask:
                    units.setdefault(r["seed"] if over == "seeds" else (r["seed"], r["target"]), []).append(r)
            values = []
            for group in units.values():
                anchor = {"target_em_after": group[0].get("target_em_before", 50.0),
                          "retain_em_after": group[0].get("retain_em_before", 50.0)}
                values.append(_interpolate(_pareto(group + [anchor]), target_em))
            vals = [v for v in values if v == v]
            lo, hi = bootstrap_mean_ci(vals) if len(vals) == len(values) else (float("nan"), float("nan"))
            out[mask] = {"retain_em": sum(vals) / len(vals) if len(vals) == len(values) else float("nan"),
                         "ci_low": lo, "ci_high": hi, "n_seeds": len({u if over == "seeds" else u[0] for u in units}),
                         **({"n_units": len(values)} if over == "targets" else {})}
        return out

    def summary(self) -> dict[str, Any]:
        """The grid, each mask's retain EM at target EM 25 with its interval, and its frontier."""
        def r3(v: Any) -> Any:
            return None if isinstance(v, float) and v != v else round(v, 3) if isinstance(v, float) else v

        grid = {k: _grid_sorted({r[k] for r in self.rows}) for k in ("lr", "steps", "decay", "seed")}
        keep = ("lr", "steps", "decay", "n_seeds", "target_em_after", "target_em_after_ci_low", "target_em_after_ci_high",
                "retain_em_after", "retain_em_after_ci_low", "retain_em_after_ci_high")
        over_targets = {m: {k: r3(v) for k, v in d.items()} for m, d in self.retain_at(25.0, over="targets").items()} \
            if self.trials else None
        return {"grid": grid, "retain_at_target_25": {m: {k: r3(v) for k, v in d.items()}
                                                      for m, d in self.retain_at(25.0).items()},
                **({"retain_at_target_25_over_targets": over_targets} if over_targets is not None else {}),
                "frontier": {m: [{k: p[k] if k == "lr" else r3(p[k]) for k in keep} for p in self.frontier(m)]
                             for m in self.masks}}

    def plot(self) -> "go.Figure":
        """Every grid point (seed means) and each mask's frontier: retain EM after (y) against target
        EM after (x), 95% intervals over seeds as error bars: the better mask is higher at equal x."""
        from memlens.viz.unlearning import plot_tradeoff

        return plot_tradeoff(self)


def _grid_sorted(values: Any) -> list[Any]:
    """Grid values in order: numbers ascending, then labels (``none``, ``coupled:1``, ...) by name."""
    return sorted(values, key=lambda v: (isinstance(v, str), v))


def _point_key(r: dict[str, Any]) -> tuple:
    return r["mask"], r["lr"], r.get("steps"), r.get("decay", "none")


def _pareto(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points not beaten on both lower target EM and higher retain EM, by target EM."""
    order = sorted(points, key=lambda p: (p["target_em_after"], -p["retain_em_after"]))
    front, best = [], -float("inf")
    for p in order:
        if p["retain_em_after"] > best:
            front.append(p)
            best = p["retain_em_after"]
    return front


def _interpolate(front: list[dict[str, Any]], target_em: float) -> float:
    """The frontier's retain EM at ``target_em`` (linear between its points); NaN outside it."""
    xs = [p["target_em_after"] for p in front]
    ys = [p["retain_em_after"] for p in front]
    if not xs or target_em < xs[0] or target_em > xs[-1]:
        return float("nan")
    for k in range(len(xs) - 1):
        if xs[k] <= target_em <= xs[k + 1]:
            if xs[k + 1] == xs[k]:
                return max(ys[k], ys[k + 1])
            t = (target_em - xs[k]) / (xs[k + 1] - xs[k])
            return ys[k] + t * (ys[k + 1] - ys[k])
    return ys[-1]


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


@with_precision
def mask_tradeoff(
    model: "HookedModel", targets: ParagraphSet, retain: ParagraphSet, lrs: Any,
    masks: Any = ("all", "topk", "random"), checkpoint: str | Path | None = None, *,
    steps: Any = (), decays: Any = (), seeds: Any = (0,),
    settings: FineTuneSettings | None = None, progress: bool = True, out: str | Path | None = None,
    fresh: bool = False, **compare_kwargs: Any,
) -> MaskTradeoff:
    """Unlearning trade-off frontiers: :func:`compare_masks` (objective ``unlearn``) at every point
    of the grid ``lrs`` x ``steps`` x ``decays``, each with every seed of ``seeds``, kept as the
    trial means per (mask, point, seed), so that masks are compared at equal forgetting rather than
    at one setting (:meth:`MaskTradeoff.frontier`, :meth:`MaskTradeoff.retain_at`).

    Args:
        model, targets, retain, masks: as for :func:`compare_masks`.
        lrs: a list of the learning rates of the grid (at least one). The grid's lists (lrs,
            masks, steps, decays, seeds) are not typed: a single value or a value given twice is
            refused with a one-line :class:`InputError`.
        checkpoint: every grid point and seed writes its finished runs beside this path
            (``<path>.<lr>-<steps>-<decay>-s<seed>``); an interrupted grid resumes (a checkpoint of
            another computation is refused, see :func:`compare_masks`); the files are removed once
            the grid is done, and with ``out`` only after the result is saved there.
        out: save the result to this file (atomically) before the checkpoints are removed.
        fresh: start checkpoints of another computation afresh instead of refusing them.
        steps: the steps of the grid (empty: the settings' steps).
        decays: weight decays of the grid, each ``none``, ``coupled:<w>`` or ``decoupled:<w>``
            (empty: the settings' decay).
        seeds: seeds of each point (retain batches and random masks; >= 3 for intervals).
        settings: the other fine-tuning settings (:class:`FineTuneSettings`).
        progress: a progress bar over the grid.
        compare_kwargs: any other setting of :func:`compare_masks` (n_trials, retain_per_trial, ...).
    """
    from memlens.core.defaults import check_seed
    from memlens.core.progress import tqdm

    base = FineTuneSettings.resolve(settings, {k: compare_kwargs.pop(k) for k in list(compare_kwargs)
                                               if k in FineTuneSettings.__dataclass_fields__})
    lrs, steps, decays, masks = (distinct_list(name, v) for name, v in (("lrs", lrs), ("steps", steps),
                                                                       ("decays", decays), ("masks", masks)))
    if not lrs:
        raise InputError("mask_tradeoff needs at least one learning rate: the grid has no point")
    if out is not None:
        from memlens.core.io import check_output_file

        check_output_file(out, "the trade-off result file")
    for name, values in (("lr", lrs), ("steps", steps)):
        for v in values:
            if (problem := finetune_problem(name, v)) is not None:
                raise InputError(f"mask_tradeoff: {name} {v!r} {problem}")
    if "seed" in compare_kwargs:  # one seed given the way compare_masks takes it
        seeds = [compare_kwargs.pop("seed")]
    decay_grid = [parse_decay(d) for d in decays] or [(base.decay_mode, base.weight_decay)]
    seeds = [check_seed(s) for s in distinct_list("seeds", seeds)]
    if not seeds:
        raise InputError("mask_tradeoff needs at least one seed")
    grid = [(float(lr), int(st), mode, w) for lr in lrs for st in (steps or [base.steps]) for mode, w in decay_grid]
    # seed by seed: a seed's trials (retain batches, references, scores before, objective maps) are
    # prepared once by the shared tuner and reused at every point of the grid
    jobs = [(point, seed) for seed in seeds for point in grid]
    tuner = SparseFineTuner(model, progress=False)
    rows: list[dict[str, Any]] = []
    trials: list[dict[str, Any]] = []
    files = []
    for (lr, st, mode, w), seed in tqdm(jobs, desc="trade-off grid", disable=not progress):
        point = dataclasses.replace(base, lr=lr, steps=st, decay_mode=mode, weight_decay=w)
        label = decay_label(point)
        ckpt = None if checkpoint is None else Path(f"{checkpoint}.{lr:g}-{st}-{label}-s{seed}")
        files.append(ckpt)
        table = compare_masks(model, targets, retain, objectives=("unlearn",), masks=masks, settings=point, seed=seed,
                              checkpoint=ckpt, progress=False, tuner=tuner, fresh=fresh, **compare_kwargs)
        rows += [{"lr": lr, "steps": st, "decay": label, "seed": seed} | {k: v for k, v in r.items() if k != "objective"}
                 for r in table.rows]
        trials += [{"lr": lr, "steps": st, "decay": label, "seed": seed, "mask": r["mask"], "trial": r["trial"],
                    "target": r["target"]} | {k: r[k] for k in TRIAL_COLUMNS if k in r} for r in table.trials]
    n_trials = compare_kwargs.get("n_trials") or len(targets)
    result = MaskTradeoff(rows=rows, trials=trials, provenance=Provenance.capture(
        model, **(base.to_dict() | {"lrs": [float(x) for x in lrs], "steps": list(steps) or [base.steps],
                                    "decays": list(decays) or [decay_label(base)], "seeds": list(seeds),
                                    "masks": list(masks)}),
        **{k: v for k, v in compare_kwargs.items() if k not in ("other_memorized", "perturbed")},
        targets=[targets.ids[t % len(targets)] for t in range(n_trials)], retain_pool=list(retain.ids)))
    if out is not None:
        result.save(out)
    for f in files:
        if f is not None:
            f.unlink(missing_ok=True)
    return result



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


