"""Trade-off frontiers of the unlearning masks (the paper's Fig. 5 read at equal forgetting):
:func:`compare_masks` over a grid of learning rates x steps x weight decays, every point with
several seeds, and the frontiers, the retain EM at equal forgetting and its intervals over seeds or
over (seed, target) frontiers."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memlens.analyses.finetune import FineTuneSettings, finetune_problem
from memlens.analyses.mask_comparison import TRIAL_COLUMNS, compare_masks, decay_label, parse_decay
from memlens.analyses.unlearn import SparseFineTuner
from memlens.core.data import ParagraphSet
from memlens.core.defaults import distinct_list
from memlens.core.errors import InputError
from memlens.core.precision import with_precision
from memlens.core.results import Provenance, Result, check_same_model
from memlens.core.stats import bootstrap_mean_ci

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from memlens.core.model import HookedModel


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
        _check_target_em(target_em, "retain_at")
        if over not in ("seeds", "targets"):
            raise InputError(f"over must be 'seeds' or 'targets', got {over!r}")
        if over == "targets" and not self.trials:
            raise InputError("this trade-off kept no per-trial rows (written before memlens kept them); resample "
                             "over='seeds'")
        out = {}
        for mask in self.masks:
            units = self._unit_retain(mask, target_em, over)
            values = list(units.values())
            vals = [v for v in values if v == v]
            lo, hi = bootstrap_mean_ci(vals) if len(vals) == len(values) else (float("nan"), float("nan"))
            out[mask] = {"retain_em": sum(vals) / len(vals) if len(vals) == len(values) else float("nan"),
                         "ci_low": lo, "ci_high": hi, "n_seeds": len({u if over == "seeds" else u[0] for u in units}),
                         **({"n_units": len(values)} if over == "targets" else {})}
        return out

    def per_target(self, target_em: Any = 25.0) -> list[dict[str, Any]]:
        """Per (mask, target paragraph): the retain EM that target's own frontier keeps at target EM
        ``target_em`` (mean over the seeds whose frontier reaches it, NaN when none does), how many
        seeds reach it, and the target EM after at each grid point (mean over seeds): which
        paragraphs a mask forgets cheaply and which it does not."""
        if not self.trials:
            raise InputError("this trade-off kept no per-trial rows (written before memlens kept them)")
        _check_target_em(target_em, "per_target")
        out = []
        for mask in dict.fromkeys(r["mask"] for r in self.trials):
            units = self._unit_retain(mask, float(target_em), "targets")
            for target in dict.fromkeys(t for _, t in units):
                vals = [v for (_, t), v in units.items() if t == target]
                reached = [v for v in vals if v == v]
                trials = [r for r in self.trials if r["mask"] == mask and r["target"] == target]
                after = {}
                for key in dict.fromkeys(_point_key(r)[1:] for r in trials):
                    group = [r["target_em_after"] for r in trials if _point_key(r)[1:] == key]
                    after[f"lr {key[0]:g} x{key[1]} {key[2]}"] = sum(group) / len(group)
                out.append({"mask": mask, "target": target, "retain_em": sum(reached) / len(reached) if reached
                            else float("nan"), "seeds_reaching": len(reached), "n_seeds": len(vals),
                            "target_em_after": after})
        return out

    def _unit_retain(self, mask: str, target_em: float, over: str) -> dict[Any, float]:
        """Per unit (a seed, or a (seed, target)): the retain EM its frontier keeps at ``target_em``."""
        rows = self.rows if over == "seeds" else self.trials
        units: dict[Any, list[dict[str, Any]]] = {}
        for r in rows:
            if r["mask"] == mask:
                units.setdefault(r["seed"] if over == "seeds" else (r["seed"], r["target"]), []).append(r)
        out = {}
        for unit, group in units.items():
            anchor = {"target_em_after": group[0].get("target_em_before", 50.0),
                      "retain_em_after": group[0].get("retain_em_before", 50.0)}
            out[unit] = _interpolate(_pareto(group + [anchor]), target_em)
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


def _check_target_em(target_em: Any, where: str) -> None:
    if isinstance(target_em, bool) or not isinstance(target_em, (int, float)) or not math.isfinite(target_em):
        raise InputError(f"{where} takes a target EM (a finite number of tokens, e.g. 25.0), got {target_em!r}")


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
    """The frontier's retain EM at ``target_em`` (linear between its points); NaN where it never
    forgets that far. Above its last point (one that beat the untouched model: it forgot some
    tokens at no retain cost) the retain EM is that point's."""
    xs = [p["target_em_after"] for p in front]
    ys = [p["retain_em_after"] for p in front]
    if not xs or target_em < xs[0]:
        return float("nan")
    if target_em > xs[-1]:
        return float(ys[-1])
    for k in range(len(xs) - 1):
        if xs[k] <= target_em <= xs[k + 1]:
            if xs[k + 1] == xs[k]:
                return max(ys[k], ys[k + 1])
            t = (target_em - xs[k]) / (xs[k + 1] - xs[k])
            return ys[k] + t * (ys[k + 1] - ys[k])
    return ys[-1]


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
