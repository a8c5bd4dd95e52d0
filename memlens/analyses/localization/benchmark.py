"""The localization benchmark: every localizer scored against planted truth (INJ) and by what
dropping its neurons does (DEL), over ratios and seeds (Chang et al., 2024, on memlens's models).

For each ratio and seed: ``n_paragraphs`` new paragraphs (never seen by the model) are injected
through a random ``ratio`` of the MLP neurons of every layer (:func:`~memlens.analyses.injection.inject_neurons`;
every other weight bit-identical, checked); each localizer scores the neurons for the injected
paragraphs, and

- **INJ**: its top ``n_L`` neurons of each layer (``n_L`` = the planted count there) are compared
  with the planted set: recall = |found and planted| / |planted|, precision = |found and planted| /
  |found| (equal when every layer's count is the planted count), overall and per layer;
- **DEL**: those neurons are dropped (activations zeroed) and the benchmark measures the EM the
  injected paragraphs lose, the EM other memorized paragraphs lose (collateral) and the NLL change
  on non-memorized text: a localizer that breaks everything is not localizing.

**DEL on natural memorization** (``del_natural``, as Chang et al.'s DEL): for each seed,
``n_paragraphs`` of the model's own memorized paragraphs are localized in the untouched model and,
for each ratio, the top ``ratio`` x d_mlp neurons of every layer are dropped: the targets' EM drop
against the other memorized paragraphs' (free of any injection's side effects).

With ``weight_ratios``, paragraphs are also injected through a random ratio of single weights of the
trainable set and the localizers that score weights (the paper's gradient) are scored on their top
weights (recall at the paper's own granularity). The model's weights are restored bit for bit
after every seed. Every figure is reported as the mean over seeds with a bootstrap 95% interval.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from memlens.analyses.base import Analysis
from memlens.analyses.injection import InjectionSettings, inject_neurons, inject_weights, not_recited
from memlens.analyses.localization.base import (Localizer, NeuronScores, check_localizer_names, localizer_names,
                                                make_localizer, window_gain)
from memlens.analyses.localization.benchmark_result import LocalizationBenchmarkResult, take_block
from memlens.analyses.localization.weight_scores import mask_recall
from memlens.core.checkpoint import Checkpoint, model_identity, paragraph_fingerprint
from memlens.core.data import ParagraphSet, as_paragraph_set
from memlens.core.defaults import distinct_list
from memlens.core.errors import InputError
from memlens.core.metrics import teacher_forced_scores
from memlens.core.model import preserved_weights
from memlens.core.neurons import NeuronLayout
from memlens.core.progress import tqdm
from memlens.core.results import Provenance

#: the planted shares of Chang et al.'s range (0.1% to 5%) the benchmark runs by default
RATIOS = (0.01, 0.02, 0.05)


class LocalizationBenchmark(Analysis):
    """INJ and DEL for every registered localizer, over ratios and seeds.

    Example::

        bench = LocalizationBenchmark(model).run(ratios=(0.01,), seeds=(0, 1, 2))
        bench.table(); bench.plot(); bench.plot_del()
    """

    def run(
        self, paragraphs: ParagraphSet | None = None, *, memorized: ParagraphSet | None = None,
        non_memorized: ParagraphSet | None = None, localizers: Any = None,
        ratios: Any = RATIOS, seeds: Any = (0, 1, 2), n_paragraphs: int = 4,
        weight_ratios: Any = (), inject_lr: float | None = None, inject_steps: int | None = None,
        contrast_paragraphs: int = 16, del_paragraphs: int = 16,
        localizer_settings: Any = None,
        del_natural: bool = True, checkpoint: str | Path | None = None, progress: bool | None = None,
        fresh: bool = False,
    ) -> LocalizationBenchmarkResult:
        """Run the benchmark.

        Args:
            paragraphs: the pool of new paragraphs to inject (each seed draws ``n_paragraphs`` of
                them); default: the model's held-out ground-truth paragraphs (never trained on).
            memorized: other memorized paragraphs (DEL's collateral); default: the ground truth's
                memorized ones (a scan of its paragraph set).
            non_memorized: non-memorized paragraphs: the first ``contrast_paragraphs`` are the
                localizers' contrast set, the next ``del_paragraphs`` DEL's NLL text; default: the
                scan's non-memorized ones.
            localizers: a list of registered names (default: every registered localizer).
            ratios: a list of planted neuron shares per layer, each in (0, 1), each once.
            seeds: a list of seeds of the planted sets (and of the paragraphs drawn); at least
                one, each once. (The list arguments are not typed: anything else is refused with a
                one-line :class:`InputError`.)
            n_paragraphs: paragraphs injected per seed.
            weight_ratios: planted single-weight shares for the weight-level INJ (empty: none).
            inject_lr, inject_steps: the injection's Adam learning rate and step budget (default:
                :class:`memlens.InjectionSettings`'s).
            contrast_paragraphs, del_paragraphs: see ``non_memorized``; ``del_paragraphs`` also
                caps the other memorized paragraphs.
            localizer_settings: constructor settings per localizer name (``{"hard_concrete":
                {"penalty": 50}}``).
            del_natural: also DEL on the model's own memorized paragraphs (needs more than
                ``n_paragraphs`` of them).
            checkpoint: a JSON-lines file each finished (level, ratio, seed) is appended to; a
                later call with the same file and the same computation (model, weight form,
                precision, every setting, the paragraphs) skips them (an interrupted benchmark
                resumes); one made by another computation is refused, naming what differs.
            progress: show a progress bar over (level, ratio, seed).
            fresh: start a checkpoint of another computation afresh instead of refusing it.
        """
        names = check_localizer_names(localizers if localizers is not None else localizer_names())
        if localizer_settings is not None and not isinstance(localizer_settings, Mapping):
            raise InputError(f"localizer_settings must map localizer names to their settings, e.g. "
                             f"{{'hard_concrete': {{'penalty': 50}}}}, got {type(localizer_settings).__name__}")
        settings = {k: dict(v) for k, v in (localizer_settings or {}).items()}
        unknown = sorted(set(settings) - set(names))
        if unknown:
            raise InputError(f"localizer_settings names localizers not in the run: {unknown}; the run has {list(names)}")
        for name in names:  # every localizer is built once now: a bad setting fails before any injection
            make_localizer(name, self.model, **settings.get(name, {}))
        ratios, weight_ratios = distinct_list("ratios", ratios), distinct_list("weight_ratios", weight_ratios)
        seeds = distinct_list("seeds", seeds)
        ist = InjectionSettings.resolve(None, lr=inject_lr, steps=inject_steps)
        inject_lr, inject_steps = ist.lr, ist.steps
        for label, values in (("ratios", ratios), ("weight_ratios", weight_ratios)):
            for r in values:
                if not (isinstance(r, (int, float)) and not isinstance(r, bool) and 0 < r < 1):
                    raise InputError(f"{label}: a ratio must be in (0, 1), got {r!r}")
        if not ratios and not weight_ratios:
            raise InputError("the benchmark needs at least one ratio (ratios or weight_ratios)")
        from memlens.core.defaults import check_seed

        if not seeds:
            raise InputError("the benchmark needs at least one seed")
        seeds = [check_seed(s) for s in seeds]
        for label, v in (("n_paragraphs", n_paragraphs), ("contrast_paragraphs", contrast_paragraphs),
                         ("del_paragraphs", del_paragraphs), ("inject_steps", inject_steps)):
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise InputError(f"{label} must be an integer >= 1, got {v!r}")
        pool, memorized, non_memorized = self._sets(paragraphs, memorized, non_memorized, n_paragraphs,
                                                    contrast_paragraphs + del_paragraphs)
        contrast = non_memorized[:contrast_paragraphs]
        del_text = non_memorized[contrast_paragraphs : contrast_paragraphs + del_paragraphs]
        others = memorized[:del_paragraphs] if memorized is not None and len(memorized) else None
        jobs = [("neuron", r, s) for r in ratios for s in seeds] + [("weight", r, s) for r in weight_ratios for s in seeds]
        if del_natural and ratios and memorized is not None and len(memorized) > n_paragraphs:
            jobs += [("natural", 0.0, s) for s in seeds]
        ckpt = None
        if checkpoint is not None:
            ckpt = Checkpoint(checkpoint, "localization", model_identity(self.model) | {
                "localizers": list(names), "localizer_settings": settings, "ratios": list(ratios), "seeds": list(seeds),
                "weight_ratios": list(weight_ratios), "n_paragraphs": n_paragraphs, "inject_lr": inject_lr,
                "inject_steps": inject_steps, "contrast_paragraphs": contrast_paragraphs,
                "del_paragraphs": del_paragraphs, "del_natural": del_natural, "pool": paragraph_fingerprint(pool),
                "memorized": paragraph_fingerprint(memorized), "non_memorized": paragraph_fingerprint(non_memorized)},
                fresh=fresh)
        saved = ckpt.load() if ckpt is not None else {}
        done = {(str(k[0]), float(k[1]), int(k[2])): v for k, v in saved.items() if len(k) == 3}
        pieces = _Pieces(ckpt, {(str(k[0]), float(k[1]), int(k[2]), str(k[3])): v
                                for k, v in saved.items() if len(k) == 4})
        rows: list[dict[str, Any]] = []
        injections: list[dict[str, Any]] = []
        for job in tqdm(jobs, desc="localization benchmark", disable=not self._progress(progress)):
            if job in done:
                block = done[job]
            else:
                if job[0] == "natural":
                    block = self._natural_block(job[2], memorized, n_paragraphs, names, settings, contrast, del_text,
                                                del_paragraphs, ratios, pieces)
                else:
                    block = self._block(*job, pool, n_paragraphs, names, settings, contrast, del_text, others,
                                        inject_lr, inject_steps, pieces)
                block["key"] = list(job)
                if ckpt is not None:
                    ckpt.append(job, block)
            take_block(block, job, str(checkpoint), rows, injections,
                       "; delete the checkpoint, or pass fresh=True, to start over")
        return LocalizationBenchmarkResult(rows=rows, injections=injections, provenance=Provenance.capture(
            self.model, localizers=list(names), ratios=list(ratios), seeds=list(seeds), n_paragraphs=n_paragraphs,
            weight_ratios=list(weight_ratios), inject_lr=inject_lr, inject_steps=inject_steps,
            contrast_paragraphs=contrast_paragraphs, del_paragraphs=del_paragraphs, localizer_settings=settings,
            del_natural=del_natural))

    # --- sets --------------------------------------------------------------------------------
    def _sets(self, paragraphs: ParagraphSet | None, memorized: ParagraphSet | None, non_memorized: ParagraphSet | None,
              n_paragraphs: int, n_non: int) -> tuple[ParagraphSet, ParagraphSet | None, ParagraphSet]:
        """The injection pool (paragraphs the model does not recite), the other memorized and the
        non-memorized paragraphs; defaults from the model's ground truth."""
        truth = self.model.ground_truth
        if paragraphs is None or memorized is None or non_memorized is None:
            if truth is None:
                raise InputError("the localization benchmark needs paragraphs=, memorized= and non_memorized= for a "
                                 "model without ground truth (the organisms have their own)")
            from memlens.analyses.scan import scan

            result = scan(self.model, truth.paragraph_set(), progress=False)
            memorized = result.memorized() if memorized is None else memorized
            non_memorized = result.non_memorized() if non_memorized is None else non_memorized
            paragraphs = truth.held_out if paragraphs is None else paragraphs
        pool = as_paragraph_set(paragraphs, self.model, "the localization benchmark (paragraphs)")
        non_memorized = as_paragraph_set(non_memorized, self.model, "the localization benchmark (non_memorized)")
        if len(pool) == 0:
            raise InputError("the localization benchmark got an empty paragraph pool (paragraphs=): pass paragraphs the "
                             f"model does not recite to inject, at least n_paragraphs = {n_paragraphs}")
        if len(non_memorized) == 0:
            raise InputError("the localization benchmark got no non-memorized paragraphs (non_memorized=): pass at least "
                             f"contrast_paragraphs + del_paragraphs = {n_non}")
        for s in (pool, non_memorized, memorized):
            if s is not None and len(s):
                s.validate(self.model.vocab_size, self.model.n_ctx)
        pool = not_recited(self.model, pool, self.batch_size)  # what the model recites already cannot be planted
        if len(pool) < n_paragraphs:
            raise InputError(f"the injection pool has {len(pool)} paragraphs the model does not recite; n_paragraphs "
                             f"is {n_paragraphs}: pass more paragraphs or a smaller n_paragraphs")
        if len(non_memorized) < n_non:
            raise InputError(f"{len(non_memorized)} non-memorized paragraphs for contrast_paragraphs + del_paragraphs = "
                             f"{n_non}; pass more or lower them")
        pool.check_compatible(non_memorized, "the injection pool and the non-memorized paragraphs")
        return pool, memorized, non_memorized

    # --- one (level, ratio, seed) -------------------------------------------------------------
    def _block(self, level: str, ratio: float, seed: int, pool: ParagraphSet, n: int, names: Sequence[str],
               settings: dict[str, dict[str, Any]], contrast: ParagraphSet, del_text: ParagraphSet,
               others: ParagraphSet | None, inject_lr: float, inject_steps: int, pieces: "_Pieces") -> dict[str, Any]:
        g = torch.Generator().manual_seed(seed)
        targets = pool[torch.randperm(len(pool), generator=g)[:n].tolist()]
        with preserved_weights(self.model.tl_model):  # every injection is undone, bit for bit
            t0 = time.perf_counter()
            inject = inject_neurons if level == "neuron" else inject_weights
            keep = contrast if others is None else ParagraphSet.concat([contrast, others])
            before = self._health(others, del_text)
            res = inject(self.model, targets, ratio, seed=seed, lr=inject_lr, steps=inject_steps,
                         batch_size=max(n, 1), progress=False, retain=keep)
            after = self._health(others, del_text)
            injection = {"level": level, "ratio": ratio, "seed": seed, "paragraphs": list(targets.ids),
                         "success_rate": res.success_rate, "steps": res.steps, "sites_size": res.sites_size,
                         "weights_changed_outside": res.weights_changed_outside,
                         "seconds": round(time.perf_counter() - t0, 2),
                         "other_em_change": after["other_em"] - before["other_em"],
                         "non_memorized_nll_change": after["text_nll"] - before["text_nll"]}
            if res.planted_neurons is not None:
                injection["planted_per_layer"] = res.planted_neurons.sum(1).tolist()
            learned = targets.filter(res.memorized.tolist())
            if len(learned) == 0:
                injection["note"] = "no paragraph was fully injected; nothing to localize"
                return {"injection": injection, "rows": []}
            made = {k: injection[k] for k in ("paragraphs", "steps", "success_rate")}
            rows = [pieces.row((level, ratio, seed, name), made, lambda name=name: self._score(
                level, ratio, seed, name, settings.get(name, {}), learned, res, contrast, del_text, others))
                for name in names]
            return {"injection": injection, "rows": [r for r in rows if r is not None]}

    def _natural_block(self, seed: int, memorized: ParagraphSet, n: int, names: Sequence[str],
                       settings: dict[str, dict[str, Any]], contrast: ParagraphSet, del_text: ParagraphSet,
                       del_paragraphs: int, ratios: Sequence[float], pieces: "_Pieces") -> dict[str, Any]:
        """DEL on ``n`` of the model's own memorized paragraphs (drawn with ``seed``): each
        localizer runs once on the untouched model; for each ratio its top ``ratio`` x d_mlp neurons
        per layer are dropped (a localizer's time and loss trace are on its first ratio's row)."""
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(memorized), generator=g).tolist()
        targets, others = memorized[order[:n]], memorized[order[n : n + del_paragraphs]]
        layout = NeuronLayout(self.model)
        def localize(name: str) -> list[dict[str, Any]]:
            keep = max(1, int(round(max(ratios) * layout.d_mlp)))
            loc = make_localizer(name, self.model, progress=False, **settings.get(name, {}))
            found = loc.run(targets, contrast=contrast, keep=keep)
            convergence = _convergence(loc, found)
            out = []
            for k, ratio in enumerate(ratios):
                top = found.top(max(1, int(round(ratio * layout.d_mlp))))
                once = convergence if k == 0 else {x: v for x, v in convergence.items() if x != "loss_trace"}
                out.append({"level": "natural", "ratio": ratio, "seed": seed, "localizer": name,
                            "seconds": round(found.seconds, 3) if k == 0 else 0.0, "steps": found.steps,
                            "paragraphs": list(targets.ids)} | once | self._drop(top, targets, others, del_text))
            return out

        rows: list[dict[str, Any]] = []
        for name in names:
            rows += pieces.row(("natural", 0.0, seed, name), {"paragraphs": list(targets.ids)},
                               lambda name=name: localize(name))
        return {"injection": None, "rows": rows}

    def _score(self, level: str, ratio: float, seed: int, name: str, kwargs: dict[str, Any], targets: ParagraphSet,
               res: Any, contrast: ParagraphSet, del_text: ParagraphSet, others: ParagraphSet | None) -> dict[str, Any] | None:
        loc = make_localizer(name, self.model, progress=False, **kwargs)
        if level == "weight" and not loc.scores_weights:
            return None
        keep = int(res.planted_neurons.sum(1).max()) if level == "neuron" else None
        found = loc.run(targets, contrast=contrast, keep=keep)
        row: dict[str, Any] = {"level": level, "ratio": ratio, "seed": seed, "localizer": name,
                               "seconds": round(found.seconds, 3), "steps": found.steps} | _convergence(loc, found)
        if level == "weight":
            planted = res.planted_weights
            count = sum(int(m.sum()) for m in planted.values())
            recall = mask_recall(found.top_weights(count), planted)
            return row | {"recall": recall, "precision": recall}
        planted = res.planted_neurons
        top = found.top(planted.sum(1))
        hit = top & planted
        row |= {"recall": float(hit.sum() / planted.sum()), "precision": float(hit.sum() / top.sum().clamp_min(1)),
                "layer_recall": (hit.sum(1).float() / planted.sum(1).clamp_min(1)).tolist()}
        return row | self._drop(top, targets, others, del_text)

    @torch.no_grad()
    def _health(self, others: ParagraphSet | None, text: ParagraphSet) -> dict[str, float]:
        """Mean EM of the other memorized paragraphs and mean NLL of the non-memorized text (what an
        injection should leave as it was)."""
        out = {"text_nll": float(teacher_forced_scores(self.model, text.tokens, text.prefix_len, self.batch_size).nll.mean()),
               "other_em": float("nan")}
        if others is not None:
            out["other_em"] = float(teacher_forced_scores(self.model, others.tokens, others.prefix_len,
                                                          self.batch_size).em.float().mean())
        return out

    @torch.no_grad()
    def _drop(self, neurons: torch.Tensor, targets: ParagraphSet, others: ParagraphSet | None,
              text: ParagraphSet) -> dict[str, float]:
        """DEL: EM lost by the targets and by the other memorized paragraphs, and the NLL change of
        the non-memorized text, when ``neurons`` are dropped."""
        layout = NeuronLayout(self.model)
        sets = {"target": targets, "text": text} | ({"other": others} if others is not None else {})
        before = {k: teacher_forced_scores(self.model, s.tokens, s.prefix_len, self.batch_size) for k, s in sets.items()}
        with layout.dropped(neurons):
            after = {k: teacher_forced_scores(self.model, s.tokens, s.prefix_len, self.batch_size) for k, s in sets.items()}
        out = {"del_target_em_drop": float((before["target"].em - after["target"].em).float().mean()),
               "del_non_memorized_nll_change": float((after["text"].nll - before["text"].nll).mean())}
        if "other" in sets:
            out["del_other_em_drop"] = float((before["other"].em - after["other"].em).float().mean())
        return out


def _convergence(loc: Localizer, found: NeuronScores) -> dict[str, Any]:
    """For a learned mask: its ``loss_trace`` (5 significant digits) and ``loss_window_gain``, the
    relative fall of its best loss over its last ``patience`` steps (below ``tol``: converged by its
    own criterion; None for a localizer without a ``patience``); nothing for one-pass methods."""
    if not found.loss_trace:
        return {}
    patience = getattr(loc, "patience", None)
    gain = None if patience is None else window_gain(found.loss_trace, patience)
    return {"loss_trace": [float(f"{x:.5g}") for x in found.loss_trace],
            "loss_window_gain": None if gain is None else round(gain, 6)}


class _Pieces:
    """The finished localizers of an unfinished (level, ratio, seed) block in a checkpoint, so that
    a resume loses at most one localizer's run (on SmolLM2 up to an hour), not the whole block.
    Each piece records what it was computed on (the injected paragraphs, the injection's steps and
    success); the injection is redone on resume (seeded) and a piece whose record differs is
    computed again rather than mixed with another injection's rows."""

    def __init__(self, ckpt: Checkpoint | None, done: dict[tuple[str, float, int, str], dict[str, Any]]) -> None:
        self.ckpt, self.done = ckpt, done

    def row(self, key: tuple[str, float, int, str], made: dict[str, Any], compute: Any) -> Any:
        """The saved result of ``key`` if it was made on ``made``, else ``compute()`` (saved)."""
        saved = self.done.get(key)
        if saved is not None and saved.get("made") == made:
            return saved["result"]
        result = compute()
        if self.ckpt is not None:
            self.ckpt.append(key, {"made": made, "result": result})
        return result
