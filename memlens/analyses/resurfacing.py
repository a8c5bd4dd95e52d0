"""ResurfacingAudit: does an unlearned paragraph stay unlearned?

Each trial unlearns a group of memorized paragraphs at once with each mask (all weights, top-k,
selective, random) and objective (the paper's -NLL + KL; NPO + KL), then attacks the unlearned
model, putting its weights back bit for bit between attacks:

- ``relearn_split`` (Deeb & Roger 2024): fine-tune all weights on half of the group (T) and measure
  the other half (V) after 10 / 30 / 60 steps; the control is the same fine-tuning measured on
  paragraphs the model never memorized (``control``), so V's recovery reads against what
  relearning T teaches anyway;
- ``relearn_unrelated`` (Łucki et al. 2024): fine-tune on unrelated non-memorized paragraphs;
- ``quantize`` (Zhang et al., ICLR 2025): int8 / int4 round-to-nearest, per channel and group-wise,
  symmetric and asymmetric; also the share of the unlearning's weight changes below half a bin;
- ``prefix`` (Huang et al. 2024): perturbed, shortened and lengthened prefixes, the best EM;
- ``noise``: Gaussian noise on the unlearning mask's weights, the best EM over draws.

The recovered share of an attack is (EM after the attack - EM unlearned) / (EM before - EM
unlearned), from the means over paragraphs and trials, with a bootstrap interval over both. Back
to localization: the top-0.1% gradient mask of V before unlearning against after relearning
(Jaccard), and whether relearning moved the unlearning mask's weights back (docs/resurfacing.md).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

from memlens.analyses.base import Analysis
from memlens.analyses.finetune import FineTuneSettings
from memlens.analyses.gradients import GradientMap
from memlens.analyses.noise import noised
from memlens.analyses.per_example_grads import linear_owners
from memlens.analyses.resurfacing_attacks import (below_half_bin, exact_match, noised_scores, prefix_variants,
                                                  quantize_weights, relearn, relearn_localization)
from memlens.analyses.unlearn import SparseFineTuner
from memlens.core.checkpoint import Checkpoint, model_identity, paragraph_fingerprint
from memlens.core.data import ParagraphSet, as_paragraph_set
from memlens.core.defaults import MASK_KINDS, check_seed, distinct_list, one_of
from memlens.core.errors import InputError
from memlens.core.progress import tqdm
from memlens.core.quantize import SCHEMES, QuantScheme
from memlens.core.results import Provenance, Result

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go


ATTACKS = ("relearn_split", "relearn_unrelated", "quantize", "prefix", "noise")
#: the unlearning objectives: the paper's (-NLL, the settings' nll_scale) and NPO, each + retain KL
OBJECTIVES = ("paper", "npo")


@dataclass(frozen=True, kw_only=True)
class ResurfacingSettings:
    """The design of a resurfacing audit.

    Attributes:
        group_size: memorized paragraphs unlearned together per trial (T = the first half, V = the rest).
        relearn_steps: step counts after which relearning is scored (the anchors' 10 / 30 / 60).
        relearn_lr: Adam's learning rate of the relearning attacks (all weights of the trainable set).
        relearn_batch: paragraphs per relearning step.
        unrelated_paragraphs: non-memorized paragraphs of the unrelated fine-tuning (Łucki's 10).
        schemes: quantization schemes by name (:class:`memlens.core.quantize.QuantScheme`).
        prefix_lengths: prefix tokens kept by the shortened prefixes.
        lengthen: context tokens put before the prefix (0: no lengthened prefix).
        prefix_perturbations: single-token prefix replacements tried per target.
        noise_scales: noise std as a multiple of each parameter's std; noise_draws: draws per scale.
        localize_fraction: the share of weights of the gradient masks compared before unlearning and
            after relearning (the paper's 0.1%).
    """

    group_size: int = 4
    relearn_steps: tuple[int, ...] = (10, 30, 60)
    relearn_lr: float = 1e-4
    relearn_batch: int = 8
    unrelated_paragraphs: int = 10
    schemes: tuple[str, ...] = tuple(s.name for s in SCHEMES)
    prefix_lengths: tuple[int, ...] = (10, 25, 40)
    lengthen: int = 20
    prefix_perturbations: int = 8
    noise_scales: tuple[float, ...] = (0.5, 1.0, 2.0)
    noise_draws: int = 3
    localize_fraction: float = 0.001

    def __post_init__(self) -> None:
        ints = {"group_size": 2, "relearn_batch": 1, "unrelated_paragraphs": 1, "lengthen": 0,
                "prefix_perturbations": 0, "noise_draws": 1}
        for name, least in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise InputError(f"resurfacing: {name} must be an integer >= {least}, got {v!r}")
        for name in ("relearn_steps", "prefix_lengths", "noise_scales", "schemes"):
            distinct_list(name, getattr(self, name))
        if not self.relearn_steps or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                                             for s in self.relearn_steps):
            raise InputError(f"resurfacing: relearn_steps must be integers >= 1, got {self.relearn_steps!r}")
        if not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in self.prefix_lengths):
            raise InputError(f"resurfacing: prefix_lengths must be integers >= 1, got {self.prefix_lengths!r}")
        for name in ("relearn_lr", "localize_fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf or (
                    name == "localize_fraction" and v > 1):
                raise InputError(f"resurfacing: {name} must be a positive finite number"
                                 f"{' <= 1' if name == 'localize_fraction' else ''}, got {v!r}")
        if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and 0 < s < math.inf for s in self.noise_scales):
            raise InputError(f"resurfacing: noise_scales must be finite numbers > 0, got {self.noise_scales!r}")
        for name in self.schemes:
            QuantScheme.parse(name)

    @property
    def quant_schemes(self) -> list[QuantScheme]:
        return [QuantScheme.parse(n) for n in self.schemes]


@dataclass(frozen=True, kw_only=True)
class ResurfacingResult(Result):
    """What came back after each attack on each unlearned model.

    Attributes:
        rows: one dict per (trial, objective, mask, attack, variant, set, paragraph): ``em_before``
            (the original model), ``em_unlearned``, ``em_after`` (after the attack; for attack
            ``none``, the unlearned model itself). Sets: ``target`` (the whole group), ``V`` and
            ``T`` (the halves), ``control`` (never memorized), ``retain``.
        details: one dict per (trial, objective, mask) and measure: the unlearning's mask size and
            weights changed, the quantization's share of changes below half a bin (``quantize``),
            and the localization measures of relearning (``relearn``).
        targets: the target ids of each trial.
    """

    rows: list[dict[str, Any]]
    details: list[dict[str, Any]] = field(default_factory=list)
    targets: list[list[str]] = field(default_factory=list)
    provenance: Provenance = field(default_factory=Provenance)

    def to_dataframe(self) -> "pd.DataFrame":
        """One row per (trial, objective, mask, attack, variant, set, paragraph)."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    def table(self) -> list[dict[str, Any]]:
        """Per (objective, mask, attack, variant, set): mean EM before / unlearned / after, the
        recovered share with a bootstrap 95% interval over (trial, paragraph) rows, and n."""
        groups: dict[tuple, list[dict[str, Any]]] = {}
        for r in self.rows:
            groups.setdefault((r["objective"], r["mask"], r["attack"], r["variant"], r["set"]), []).append(r)
        out = []
        for (objective, mask, attack, variant, set_name), rows in groups.items():
            share, lo, hi = recovered_share(rows)
            mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("em_before", "em_unlearned", "em_after")}
            out.append({"objective": objective, "mask": mask, "attack": attack, "variant": variant, "set": set_name,
                        "n": len(rows)} | mean | {"recovered": share, "recovered_ci_low": lo, "recovered_ci_high": hi})
        return out

    def headline(self) -> list[dict[str, Any]]:
        """One row per (objective, mask, attack): the measured set of each attack (V for
        ``relearn_split`` at its most steps, the targets otherwise) at its strongest variant (the
        most steps; int4 group-wise asymmetric; the best prefix; the largest noise), beside the
        control's and the retain set's EM where measured."""
        table = self.table()
        pick = {"none": ("unlearned", "target"), "relearn_split": (None, "V"), "relearn_unrelated": (None, "target"),
                "quantize": ("int4-g128-asym", "target"), "prefix": ("best", "target"), "noise": (None, "target")}
        out = []
        for (objective, mask) in dict.fromkeys((r["objective"], r["mask"]) for r in table):
            for attack, (variant, set_name) in pick.items():
                rows = [r for r in table if (r["objective"], r["mask"], r["attack"], r["set"]) == (objective, mask, attack, set_name)]
                if not rows:
                    continue
                if variant is None or not any(r["variant"] == variant for r in rows):
                    variant = rows[-1]["variant"]
                row = next(r for r in rows if r["variant"] == variant)
                extra = {}
                for other in ("control", "retain"):
                    o = [r for r in table if (r["objective"], r["mask"], r["attack"], r["variant"], r["set"])
                         == (objective, mask, attack, variant, other)]
                    if o:
                        extra[f"{other}_em_after"] = o[0]["em_after"]
                out.append({k: row[k] for k in ("objective", "mask", "attack", "variant", "set", "em_before",
                                                 "em_unlearned", "em_after", "recovered", "recovered_ci_low",
                                                 "recovered_ci_high", "n")} | extra)
        return out

    def summary(self) -> dict[str, Any]:
        """The headline table, the quantization and localization measures (means over trials)."""
        def r3(v: Any) -> Any:
            return None if isinstance(v, float) and v != v else round(v, 3) if isinstance(v, float) else v

        details: dict[str, dict[str, Any]] = {}
        for d in self.details:
            key = f"{d['objective']}/{d['mask']}/{d['kind']}" + (f"/{d['scheme']}" if "scheme" in d else "")
            acc = details.setdefault(key, {})
            for k, v in d.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("trial", "seed"):
                    acc.setdefault(k, []).append(v)
        return {"trials": len(self.targets),
                "headline": [{k: r3(v) for k, v in r.items()} for r in self.headline()],
                "details": {k: {m: r3(sum(v) / len(v)) for m, v in acc.items()} for k, acc in details.items()}}

    def plot(self) -> "go.Figure":
        """The recovered share of each attack by mask (bars, 95% interval), one panel per objective."""
        from memlens.viz.resurfacing import plot_recovered

        return plot_recovered(self.headline())


def recovered_share(rows: Sequence[dict[str, Any]], n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(after - unlearned) / (before - unlearned) of the mean EMs of ``rows``, and a bootstrap 95%
    interval resampling rows; NaN where the unlearning removed nothing (before == unlearned)."""
    em = torch.tensor([[r["em_before"], r["em_unlearned"], r["em_after"]] for r in rows], dtype=torch.float64)
    b, u, a = em.mean(0).tolist()
    if not b - u > 0:
        return float("nan"), float("nan"), float("nan")
    point = (a - u) / (b - u)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(rows), (n_boot, len(rows)), generator=gen)
    means = em[idx].mean(1)  # [n_boot, 3]
    gap = means[:, 0] - means[:, 1]
    ok = gap > 0
    if not bool(ok.any()):
        return point, float("nan"), float("nan")
    draws = (means[ok, 2] - means[ok, 1]) / gap[ok]
    return point, float(draws.quantile(0.025)), float(draws.quantile(0.975))


class ResurfacingAudit(Analysis):
    """Unlearn memorized paragraphs through each mask and objective, then attack the unlearned
    model and measure what comes back (module docstring; docs/resurfacing.md).

    Example::

        audit = ml.ResurfacingAudit(model)
        res = audit.run(mem, non, lr={"all": 1e-4, "topk": 1e-3, "selective": 1e-3, "random": 1e-2})
        res.headline(); res.plot()
    """

    DEFAULT_BATCH_SIZE = 16

    def run(
        self, targets: ParagraphSet, retain: ParagraphSet, control: ParagraphSet | None = None, *,
        masks: Any = ("all", "topk", "selective", "random"), objectives: Any = OBJECTIVES,
        attacks: Any = ATTACKS, n_trials: int = 3, seed: int = 0, retain_per_trial: int = 10,
        settings: FineTuneSettings | None = None, lr: Any = None,
        design: ResurfacingSettings | None = None, checkpoint: str | Path | None = None, fresh: bool = False,
        progress: bool | None = None,
    ) -> ResurfacingResult:
        """Run the audit.

        Args:
            targets: memorized paragraphs; each trial draws ``design.group_size`` of them.
            retain: non-memorized paragraphs: each trial's retain batch (``retain_per_trial``) and
                its unrelated fine-tuning set are drawn from them, disjoint.
            control: paragraphs the model never memorized (default: the model's held-out ground
                truth); relearning is scored on them too.
            masks: unlearning masks (``all``, ``topk``, ``selective``, ``random``; a list).
            objectives: ``paper`` (the settings' -NLL) and/or ``npo`` (a list).
            attacks: any of :data:`ATTACKS` (a list).
            n_trials: trials (each a fresh group, retain batch and seed).
            seed: seed of trial 0 (trial ``t`` uses ``seed + t``: groups, batches, random masks,
                attacks' draws).
            retain_per_trial: retain paragraphs per trial (the KL term of unlearning).
            settings: the unlearning's fine-tuning settings (default: the paper's code's, at 10 steps).
            lr: the unlearning's learning rate: one for all, one per mask (``{"all": 1e-4, ...}``)
                or one per objective and mask (``{"paper": {"all": 1e-3, ...}, "npo": {...}}``),
                chosen so that every mask forgets to a comparable EM (``benchmarks/resurfacing.py
                --calibrate``; the trade-off frontier).
            design: the attacks' settings (:class:`ResurfacingSettings`).
            checkpoint: a JSON-lines file each finished (trial, objective, mask) is appended to; a
                later call of the same audit resumes (another audit's file is refused). Trial ``t``
                is drawn from ``seed + t`` alone, so ``n_trials`` is not part of the audit's
                identity: a later call with more trials adds them, one with fewer reads the first.
            fresh: start a checkpoint of another audit afresh instead of refusing it.
            progress: show a progress bar.
        """
        model = self.model
        design = design or ResurfacingSettings()
        masks, objectives, attacks = (distinct_list(n, v) for n, v in (("masks", masks), ("objectives", objectives),
                                                                         ("attacks", attacks)))
        for name, values, known in (("masks", masks, MASK_KINDS), ("objectives", objectives, OBJECTIVES),
                                    ("attacks", attacks, ATTACKS)):
            bad = [v for v in values if v not in known]
            if bad or not values:
                raise InputError(f"resurfacing: {name} must be a non-empty list of {one_of(tuple(known))}, got {values!r}")
        base = settings if settings is not None else FineTuneSettings.paper_code(steps=10)
        if not isinstance(base, FineTuneSettings):
            raise InputError(f"settings must be a FineTuneSettings, got {type(base).__name__}")
        lrs = _learning_rates(lr, objectives, masks)
        check_seed(seed)
        if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
            raise InputError(f"n_trials must be an integer >= 1, got {n_trials!r}")
        targets = as_paragraph_set(targets, model, "the resurfacing audit (targets)")
        retain = as_paragraph_set(retain, model, "the resurfacing audit (retain)")
        if control is None and "relearn_split" in attacks:
            truth = model.ground_truth
            control = getattr(truth, "held_out", None)
            if control is None:
                raise InputError("relearn_split measures a control set of paragraphs the model never memorized: pass "
                                 "control= (the organisms use their held-out paragraphs)")
        control = as_paragraph_set(control, model, "the resurfacing audit (control)") if control is not None else None
        if len(targets) < design.group_size:
            raise InputError(f"the audit unlearns groups of {design.group_size} memorized paragraphs; got {len(targets)} "
                             "targets: pass more or lower ResurfacingSettings.group_size")
        if len(retain) < retain_per_trial + design.unrelated_paragraphs:
            raise InputError(f"{len(retain)} non-memorized paragraphs; each trial needs retain_per_trial + "
                             f"unrelated_paragraphs = {retain_per_trial + design.unrelated_paragraphs}")
        for s in (targets, retain) + ((control,) if control is not None else ()):
            targets.check_compatible(s, "the audit's paragraph sets")
            s.validate(model.vocab_size, model.n_ctx)
        per_job = {(o, m): FineTuneSettings.resolve(base, {} if lrs[(o, m)] is None else {"lr": lrs[(o, m)]})
                   for o in objectives for m in masks}
        ckpt = None
        if checkpoint is not None:
            ckpt = Checkpoint(checkpoint, "resurfacing", model_identity(model) | {
                "masks": masks, "objectives": objectives, "attacks": attacks, "seed": seed,
                "retain_per_trial": retain_per_trial, "settings": {f"{o}/{m}": s.to_dict() for (o, m), s in per_job.items()},
                "design": dataclasses.asdict(design), "targets": paragraph_fingerprint(targets),
                "retain": paragraph_fingerprint(retain), "control": paragraph_fingerprint(control)}, fresh=fresh)
        done = {(int(k[0]), str(k[1]), str(k[2])): v for k, v in ckpt.load().items()} if ckpt is not None else {}
        trials = [self._draw(t, seed + t, targets, retain, retain_per_trial, design) for t in range(n_trials)]
        jobs = [(t, o, m) for t in range(n_trials) for o in objectives for m in masks]
        tuner = SparseFineTuner(model, batch_size=self.batch_size, progress=False)
        rows: list[dict[str, Any]] = []
        details: list[dict[str, Any]] = []
        before_maps: dict[int, Any] = {}
        for job in tqdm(jobs, desc="resurfacing audit", disable=not self._progress(progress)):
            if job not in done:
                t, objective, mask = job
                block = self._block(tuner, trials[t], objective, mask, per_job[(objective, mask)], attacks, control, design,
                                    before_maps)
                if ckpt is not None:
                    ckpt.append(job, block)
                done[job] = block
            rows += done[job]["rows"]
            details += done[job]["details"]
        return ResurfacingResult(rows=rows, details=details, targets=[list(tr["group"].ids) for tr in trials],
                                 provenance=Provenance.capture(
                                     model, masks=masks, objectives=objectives, attacks=attacks, n_trials=n_trials,
                                     seed=seed, retain_per_trial=retain_per_trial,
                                     settings={f"{o}/{m}": s.to_dict() for (o, m), s in per_job.items()},
                                     design=dataclasses.asdict(design)))

    # --- one trial's sets --------------------------------------------------------------------
    def _draw(self, t: int, seed: int, targets: ParagraphSet, retain: ParagraphSet, per_trial: int,
              design: ResurfacingSettings) -> dict[str, Any]:
        gen = torch.Generator().manual_seed(seed)
        group = targets[torch.randperm(len(targets), generator=gen)[: design.group_size].tolist()]
        order = torch.randperm(len(retain), generator=gen).tolist()
        batch = retain[order[:per_trial]]
        unrelated = retain[order[per_trial: per_trial + design.unrelated_paragraphs]]
        half = design.group_size // 2
        return {"trial": t, "seed": seed, "group": group, "T": group[:half], "V": group[half:], "retain": batch,
                "unrelated": unrelated}

    # --- one (trial, objective, mask) --------------------------------------------------------
    def _block(self, tuner: SparseFineTuner, trial: dict[str, Any], objective: str, mask: str, st: FineTuneSettings,
               attacks: Sequence[str], control: ParagraphSet | None, design: ResurfacingSettings,
               before_maps: dict[int, Any]) -> dict[str, Any]:
        model, bs = self.model, self.batch_size
        t0 = time.perf_counter()
        group, retain = trial["group"], trial["retain"]
        st = dataclasses.replace(st, seed=trial["seed"], forget_loss="npo" if objective == "npo" else "nll")
        # the retain set is scored against the original model's greedy continuation (as in unlearning)
        sets = {"target": group, "T": trial["T"], "V": trial["V"], "retain": tuner.reference(retain)}
        if control is not None:
            sets["control"] = control
        before = {k: exact_match(model, s, bs) for k, s in sets.items()}
        key = {"trial": trial["trial"], "seed": trial["seed"], "objective": objective, "mask": mask}
        rows: list[dict[str, Any]] = []
        details: list[dict[str, Any]] = []

        def add(attack: str, variant: str, scores: dict[str, list[int]]) -> None:
            for set_name, ems in scores.items():
                for pid, b, u, a in zip(sets[set_name].ids, before[set_name], unlearned[set_name], ems):
                    rows.append(key | {"attack": attack, "variant": variant, "set": set_name, "paragraph": pid,
                                       "em_before": int(b), "em_unlearned": int(u), "em_after": int(a)})

        params = tuner.params
        with tuner.restored():
            original = {n: p.detach().clone() for n, p in params.items()}
            if "relearn_split" in attacks and trial["trial"] not in before_maps:
                before_maps[trial["trial"]] = self._top_mask(trial["V"], design.localize_fraction)
            result = tuner.unlearn(group, retain, mask=mask, settings=st)
            state = {n: p.detach().clone() for n, p in params.items()}
            changed = {n: state[n] != original[n] for n in params}
            unlearn_delta = {n: state[n].float() - original[n].float() for n in params}
            unlearned = {k: exact_match(model, s, bs) for k, s in sets.items()}
            add("none", "unlearned", unlearned)
            details.append(key | {"kind": "unlearn", "mask_size": result.mask_size,
                                  "weights_changed": result.weights_changed, "seconds": round(result.seconds, 2)})

            def put_back() -> None:
                tuner._put_back(state)
                if any(not torch.equal(p.detach(), state[n]) for n, p in params.items()):
                    raise InputError("resurfacing: the unlearned weights did not come back; this is a memlens bug")

            for attack in attacks:
                try:
                    if attack == "relearn_split":
                        self._relearn_split(trial, sets, control, design, params, add, details, key, changed,
                                            unlearn_delta, before_maps)
                    elif attack == "relearn_unrelated":
                        scores, _ = relearn(model, params, trial["unrelated"], {"target": group, "retain": sets["retain"]},
                                            design.relearn_steps, design.relearn_lr, design.relearn_batch, trial["seed"])
                        for step, sc in scores.items():
                            add(attack, f"steps-{step}", sc)
                    elif attack == "quantize":
                        self._quantize(params, group, sets["retain"], add, details, key, changed, unlearn_delta, original,
                                       state, design)
                    elif attack == "prefix":
                        extra = trial["unrelated"].tokens[0, : design.lengthen]
                        gen = torch.Generator().manual_seed(trial["seed"])
                        for variant, ems in prefix_variants(model, group, design.prefix_lengths, extra,
                                                            design.prefix_perturbations, bs, gen).items():
                            add(attack, variant, {"target": ems})
                    elif attack == "noise":
                        noise_mask = {n: c for n, c in changed.items() if bool(c.any())}
                        for variant, ems in noised_scores(model, params, noise_mask, group, design.noise_scales,
                                                          design.noise_draws, trial["seed"], bs, noised).items():
                            add(attack, variant, {"target": ems})
                finally:
                    put_back()
        details.append(key | {"kind": "time", "seconds": round(time.perf_counter() - t0, 2)})
        return {"rows": rows, "details": details}

    def _top_mask(self, paragraphs: ParagraphSet, fraction: float) -> dict[str, Tensor]:
        """The top ``fraction`` of weights by |gradient| of the paragraphs' NLL at the current weights."""
        return GradientMap(self.model, batch_size=self.batch_size, progress=False).run(paragraphs).mask(fraction)

    def _relearn_split(self, trial: dict[str, Any], sets: dict[str, ParagraphSet], control: ParagraphSet | None,
                       design: ResurfacingSettings, params: dict[str, Any], add: Any, details: list[dict[str, Any]],
                       key: dict[str, Any], changed: dict[str, Tensor], unlearn_delta: dict[str, Tensor],
                       before_maps: dict[int, Any]) -> None:
        scored = {"V": sets["V"], "T": sets["T"]} | ({"control": control} if control is not None else {})
        scores, delta = relearn(self.model, params, trial["T"], scored, design.relearn_steps, design.relearn_lr,
                                design.relearn_batch, trial["seed"])
        for step, sc in scores.items():
            add("relearn_split", f"steps-{step}", sc)
        after_map = self._top_mask(trial["V"], design.localize_fraction)
        details.append(key | {"kind": "relearn"} | relearn_localization(before_maps[trial["trial"]], after_map,
                                                                          changed, unlearn_delta, delta))

    def _quantize(self, params: dict[str, Any], group: ParagraphSet, retain: ParagraphSet, add: Any,
                  details: list[dict[str, Any]], key: dict[str, Any], changed: dict[str, Tensor],
                  unlearn_delta: dict[str, Tensor], original: dict[str, Tensor], state: dict[str, Tensor],
                  design: ResurfacingSettings) -> None:
        model, bs = self.model, self.batch_size
        owners = linear_owners(model, model.components) or {}
        transposed = {n for n, p in params.items() if type(owners.get(id(p))).__name__ == "Conv1D"}
        weights = {n: p for n, p in params.items() if p.ndim == 2}
        for scheme in design.quant_schemes:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(original[n])
            quantize_weights(weights, transposed, scheme)
            original_em = exact_match(model, group, bs)
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(state[n])
            steps = quantize_weights(weights, transposed, scheme)
            add("quantize", scheme.name, {"target": exact_match(model, group, bs), "retain": exact_match(model, retain, bs)})
            below, total = below_half_bin({n: changed[n] for n in weights}, unlearn_delta, steps)
            details.append(key | {"kind": "quantize", "scheme": scheme.name, "changed": total,
                                  "below_half_bin": below / total if total else float("nan"),
                                  "original_quantized_target_em": sum(original_em) / len(original_em)})


def _learning_rates(lr: Any, objectives: Sequence[str], masks: Sequence[str]) -> dict[tuple[str, str], float | None]:
    """The learning rate of each (objective, mask) from ``lr`` (None: the settings' own)."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf

    if lr is None or number(lr):
        return {(o, m): lr for o in objectives for m in masks}
    if not isinstance(lr, dict):
        raise InputError(f"lr must be a number, a dict by mask or a dict by objective of dicts by mask, got {lr!r}")
    nested = set(lr) <= set(OBJECTIVES) and all(isinstance(v, dict) for v in lr.values())
    out = {}
    for o in objectives:
        table = lr.get(o) if nested else lr
        if not isinstance(table, dict):
            raise InputError(f"lr gives no learning rates for objective {o!r}")
        missing = [m for m in masks if m not in table]
        if missing:
            raise InputError(f"lr gives no learning rate for mask(s) {missing}" + (f" of objective {o!r}" if nested else ""))
        bad = [m for m in masks if not number(table[m])]
        if bad:
            raise InputError(f"lr of mask(s) {bad} must be positive finite numbers")
        out.update({(o, m): float(table[m]) for m in masks})
    return out


__all__ = ["ATTACKS", "OBJECTIVES", "ResurfacingAudit", "ResurfacingResult", "ResurfacingSettings", "recovered_share"]
