"""SparseFineTuner: unlearn or edit a memorized paragraph through a few weights (Section 5.3).

Objectives (the paper's): *unlearn* minimises -NLL(target continuation) + kl_weight *
KL(retain paragraphs under the model || the original model); *edit* minimises NLL(new
continuation after the target's prefix) + the same KL. Only weights inside a mask move: the top
fraction by |gradient| of the objective (fixed at the first step), the same fraction by that
gradient relative to the weights' sensitivity on the retain set (``selective``), a random mask of
the same size, all weights of the trainable set, or any user mask (drawn in
:mod:`memlens.analyses.mask_drawing`). Unlike the original code (whose
Adam weight decay moved "frozen" weights), updates are strictly sparse: gradients are masked, Adam
has no weight decay, and weights outside the mask are copied back after every step.
``restore()`` brings back the exact original weights.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from memlens.analyses.base import Analysis
from memlens.core.data import Paragraph, ParagraphSet, as_paragraph_set
from memlens.core.defaults import SELECTIVITY_FLOOR, RandomMaskDraw
from memlens.core.compat import sync_fused_qkv
from memlens.core.errors import InputError
from memlens.analyses.gradients import GradientMap, GradientMapResult
from memlens.core.metrics import ContinuationScores, teacher_forced_scores
from memlens.core.objectives import continuation_logits, kl_to_reference, nll_of_logits, npo_loss, sequence_nll
from memlens.analyses.finetune import FineTuneResult, FineTuneSettings
from memlens.analyses.mask_drawing import MaskSpec, draw_mask
from memlens.analyses.sparse_mask import SparseMask
from memlens.analyses.trial_cache import GreedyReferences, TrialCache, trial_key
from memlens.core.results import Provenance
from memlens.core.sparse import MaskedAdam, only_trainable, warn_rounded_away

if TYPE_CHECKING:
    from memlens.core.model import HookedModel


class SparseFineTuner(Analysis):
    """Fine-tune a few weights of a HookedModel to unlearn or edit memorized paragraphs; reversible.

    Example::

        ft = SparseFineTuner(model)
        res = ft.unlearn(mem[0], retain=nonmem, mask="topk", fraction=0.001, steps=10)
        res = ft.unlearn(mem[0], retain=nonmem, settings=FineTuneSettings.paper_code())
        ft.restore()
        with ft.restored():          # or: every run inside is undone at the end
            ft.edit(mem[0], perturbed_paragraph=edited[0], retain=nonmem)
    """

    DEFAULT_BATCH_SIZE = 16

    def __init__(self, model: "HookedModel", *, batch_size: int | None = None, progress: bool = True,
                 precision: str | None = None) -> None:
        """
        Args:
            model: the model whose weights are fine-tuned (and restored).
            batch_size: paragraphs per forward pass of the before/after scores and per backward
                pass of the mask's gradient map (default :attr:`DEFAULT_BATCH_SIZE`).
            progress: show progress bars.
        """
        super().__init__(model, batch_size=batch_size, progress=progress, precision=precision)
        self._original: dict[str, Tensor] | None = None
        #: float32 master copies of low-precision (bfloat16/float16) weights that runs trained,
        #: carried from run to run until the weights are put back (memlens.core.sparse.MaskedAdam)
        self._masters: dict[str, Tensor] = {}
        self._references = GreedyReferences(model, self.batch_size)
        #: recent trials' inputs that do not depend on the mask or the settings, valid while the
        #: weights are the original ones: before-scores, reference logits, objective maps
        self._trials = TrialCache()
        self._sensitivities: dict[tuple, dict[str, Tensor]] = {}

    @property
    def params(self) -> dict[str, nn.Parameter]:
        """The trainable set (the component registry's parameters) by name."""
        return {s.param_name: s.param for c in self.model.components for s in c.slices}

    # --- reversibility ---------------------------------------------------------------------
    def _snapshot(self) -> None:
        if self._original is None:
            self._original = {n: p.detach().clone() for n, p in self.params.items()}

    def restore(self) -> None:
        """Put back the exact weights the model had before the first run of this tuner (a
        change made to the weights outside the tuner since then is undone too; :meth:`restored`
        keeps it)."""
        if self._original is None:
            return
        self._put_back(self._original)

    def _put_back(self, weights: dict[str, Tensor]) -> None:
        self._masters.clear()
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(weights[n])
        if self.model.hf_model is not None:  # the fused q/k/v copy greedy decoding syncs from them, too
            sync_fused_qkv(self.model.hf_model, self.model.n_heads)

    @contextlib.contextmanager
    def restored(self) -> Iterator["SparseFineTuner"]:
        """The weights as they are when the block starts come back, bit for bit, when it ends
        (also on error): runs inside the block are undone, changes made before it are kept."""
        params = self.params
        if self._original is not None and all(torch.equal(p.detach(), self._original[n]) for n, p in params.items()):
            entry = self._original  # unchanged since the first snapshot: no second copy
        else:
            entry = {n: p.detach().clone() for n, p in params.items()}
            if self._original is None:
                self._original = entry
        try:
            yield self
        finally:
            self._put_back(entry)

    def weights_changed(self) -> int:
        """Scalar weights of the trainable set that differ from the original (a low-precision
        weight that a run trained: its float32 master copy)."""
        if self._original is None:
            return 0
        total = 0
        for n, p in self.params.items():
            if n in self._masters:
                total += int((self._masters[n] != self._original[n].to(torch.float32)).sum())
            else:
                total += int((p.detach() != self._original[n]).sum())
        return total

    # --- masks -------------------------------------------------------------------------------
    def make_mask(
        self, kind: MaskSpec, fraction: float, objective_map: GradientMapResult | None,
        seed: int = 0, sensitivity: dict[str, Tensor] | None = None, selectivity_floor: float = SELECTIVITY_FLOOR,
        random_draw: RandomMaskDraw = "exact",
    ) -> SparseMask:
        """A boolean mask per trainable parameter: ``topk`` (largest |gradient| of the objective),
        ``selective`` (largest |gradient| / sqrt(retain sensitivity + lambda), see
        :func:`selective_mask`), ``random`` (uniform, same size as top-k; or with
        ``random_draw="bernoulli"`` each weight independently with probability ``fraction``, as the
        official code drew it), ``all``, a GradientMapResult's top fraction, or a user mask
        (validated). Returns a :class:`SparseMask` (``.masks``, ``.mask_kind``)."""
        masks, resolved = draw_mask(self.params, self.model.name, kind, fraction, objective_map, seed, sensitivity,
                                    selectivity_floor, random_draw)
        kept_fraction = None if resolved in ("all", "user") else float(fraction)
        return SparseMask(masks=masks, mask_kind=resolved, fraction=kept_fraction,
                          seed=int(seed) if resolved == "random" else None,
                          provenance=Provenance.capture(self.model, mask=resolved, fraction=kept_fraction,
                                                        random_draw=random_draw if resolved == "random" else None))

    def retain_sensitivity(self, retain: ParagraphSet) -> dict[str, Tensor]:
        """Per weight of the trainable set: the sum over retain paragraphs of the squared gradient of
        each paragraph's NLL of the original model's greedy continuation (a diagonal empirical
        Fisher of the retain set, nats^2 per unit weight^2). Computed once per retain set, at the
        weights of the first call."""
        key = trial_key("sensitivity", retain, precision=self.model.precision)
        if key not in self._sensitivities:
            ref = self.reference(retain)
            total: dict[str, Tensor] = {}
            gmap = GradientMap(self.model, batch_size=self.batch_size, progress=self.progress)
            for i in range(len(ref)):
                grads = gmap.compute(ref[[i]], progress=False).weight_grads
                for n, g in grads.items():
                    total[n] = total[n] + g.square() if n in total else g.square()
            self._sensitivities[key] = total
        return self._sensitivities[key]

    # --- objectives --------------------------------------------------------------------------
    def run(
        self, target: Paragraph | ParagraphSet | Sequence[str], retain: ParagraphSet | Sequence[str],
        objective: str = "unlearn", mask: MaskSpec = "topk", *, settings: FineTuneSettings | None = None,
        other_memorized: ParagraphSet | None = None, new_continuation: Tensor | None = None,
        perturbed_paragraph: Paragraph | ParagraphSet | None = None, **changes: Any,
    ) -> FineTuneResult:
        """One fine-tuning run: :meth:`unlearn` (``objective="unlearn"``) or :meth:`edit`
        (``objective="edit"``, with ``new_continuation`` or ``perturbed_paragraph``)."""
        if objective == "unlearn":
            if new_continuation is not None or perturbed_paragraph is not None:
                raise InputError("unlearning takes no new continuation; use objective='edit'")
            return self.unlearn(target, retain, mask, settings=settings, other_memorized=other_memorized, **changes)
        if objective == "edit":
            return self.edit(target, retain, new_continuation, perturbed_paragraph, mask, settings=settings,
                             other_memorized=other_memorized, **changes)
        raise InputError(f"unknown objective {objective!r}; use 'unlearn' or 'edit'")

    def unlearn(
        self, target: Paragraph | ParagraphSet | Sequence[str], retain: ParagraphSet | Sequence[str],
        mask: MaskSpec = "topk", *, settings: FineTuneSettings | None = None,
        other_memorized: ParagraphSet | None = None, **changes: Any,
    ) -> FineTuneResult:
        """Raise the NLL of the target's continuation, keeping the retain set close to the
        original model (KL), through the weights of ``mask``.

        Args:
            target: the memorized paragraph(s) to unlearn (texts are tokenized with the model's
                tokenizer, 50 + 50 tokens).
            retain: non-memorized paragraphs kept close to the original model (KL term).
            mask: ``topk`` (largest |gradient| of the objective), ``selective``, ``random`` (same
                size), ``all``, a :class:`GradientMapResult` (its top ``fraction``) or a dict of
                boolean tensors by parameter name.
            settings: the run's hyperparameters (:class:`FineTuneSettings`; its defaults when None).
            other_memorized: memorized paragraphs that should stay recited (scored, not trained).
            changes: any setting of :class:`FineTuneSettings` by name (``steps=5, lr=1e-2``),
                applied on top of ``settings``.

        Returns:
            A :class:`FineTuneResult`: EM/NLL before and after per set and paragraph, against
            the original model's own greedy continuations. The model keeps the new weights
            until :meth:`restore`.
        """
        target_set = as_paragraph_set(target, self.model, "unlearn (target)")
        retain = as_paragraph_set(retain, self.model, "unlearn (retain)")
        st = FineTuneSettings.resolve(settings, changes)
        return self._run("unlearn", target_set, target_set, retain, mask, st, other_memorized)

    def edit(
        self, target: Paragraph | ParagraphSet | Sequence[str], retain: ParagraphSet | Sequence[str],
        new_continuation: Tensor | None = None, perturbed_paragraph: Paragraph | ParagraphSet | None = None,
        mask: MaskSpec = "topk", *, settings: FineTuneSettings | None = None,
        other_memorized: ParagraphSet | None = None, **changes: Any,
    ) -> FineTuneResult:
        """Teach the model to follow the target's prefix with a new continuation, keeping the
        retain set close to the original model (KL).

        Args:
            target: the memorized paragraph(s) to edit.
            retain: non-memorized paragraphs kept close to the original model (KL term).
            new_continuation: the new continuation tokens ``[continuation]`` or ``[n, continuation]``.
            perturbed_paragraph: or: a perturbed paragraph (``PrefixPerturber.perturbed_paragraphs``)
                whose continuation becomes the new one.
            mask, settings, other_memorized, changes: as for :meth:`unlearn`.

        Returns:
            A :class:`FineTuneResult` whose target rows also score the new continuation
            (``em_new_before``, ``em_new_after``).
        """
        target_set = as_paragraph_set(target, self.model, "edit (target)")
        retain = as_paragraph_set(retain, self.model, "edit (retain)")
        st = FineTuneSettings.resolve(settings, changes)
        if (new_continuation is None) == (perturbed_paragraph is None):
            raise InputError("edit needs exactly one of new_continuation= or perturbed_paragraph=")
        new = (torch.as_tensor(new_continuation) if new_continuation is not None
               else as_paragraph_set(perturbed_paragraph, self.model, "edit (perturbed_paragraph)").continuations)
        if new.ndim == 1:
            new = new[None]
        if new.shape != target_set.continuations.shape:
            raise InputError(f"the new continuation has shape {tuple(new.shape)}, the target's "
                             f"{tuple(target_set.continuations.shape)}")
        edited = ParagraphSet(torch.cat([target_set.prefixes, new.long()], 1), target_set.prefix_len,
                              target_set.continuation_len, [f"{i}~edit" for i in target_set.ids])
        return self._run("edit", target_set, edited, retain, mask, st, other_memorized)

    def _run(self, objective: str, target: ParagraphSet, train_on: ParagraphSet, retain: ParagraphSet,
             mask_kind: Any, st: "FineTuneSettings", other: ParagraphSet | None) -> FineTuneResult:
        model = self.model
        t_start = time.perf_counter()
        sets = self._check_run(target, retain, other, st)
        retain = sets["retain"]
        self._snapshot()
        trial = self._trial_inputs(objective, train_on, retain, sets)
        refs, before, new_before, ref_logits = trial["refs"], trial["before"], trial["new_before"], trial["ref_logits"]
        n, P = len(train_on), train_on.prefix_len
        both = torch.cat([train_on.tokens, retain.tokens]).to(model.device)  # one forward for both terms per step

        npo = objective == "unlearn" and st.forget_loss == "npo"
        if npo and "npo_reference" not in trial:  # the original model's NLL of each target continuation
            with torch.no_grad():
                trial["npo_reference"] = sequence_nll(continuation_logits(model, train_on.tokens, P),
                                                      train_on.continuations).detach()

        def loss_fn() -> Tensor:
            logits = continuation_logits(model, both, P)
            kl = kl_to_reference(logits[n:], ref_logits, st.kl_direction, st.kl_reduction)
            if npo:
                return npo_loss(logits[:n], both[:n, P:], trial["npo_reference"], st.npo_beta) + st.kl_weight * kl
            nll = st.nll_scale * nll_of_logits(logits[:n], both[:n, P:])
            return (-nll if objective == "unlearn" else nll) + st.kl_weight * kl

        mask = self._objective_mask(objective, train_on, retain, mask_kind, st, trial)
        masks, kind = mask.masks, mask.mask_kind
        opt = MaskedAdam(self.params, masks, st.lr, weight_decay=st.weight_decay, decoupled=st.decay_mode == "decoupled",
                         masters=self._masters)
        try:
            t_opt = time.perf_counter()
            losses = self._optimize(loss_fn, opt, st.steps, st.lr)
            optimizer_seconds = time.perf_counter() - t_opt
            after = self._scores(refs)
            new_after = teacher_forced_scores(model, train_on.tokens, train_on.prefix_len, self.batch_size) if objective == "edit" else None
        except BaseException:  # an error or Ctrl-C: the weights are as before this run
            opt.rewind()
            raise
        rounded_away = opt.rounded_away()
        if rounded_away:
            warn_rounded_away(rounded_away, opt.weights_changed(), model.dtype)
        rows = []
        for k, s in sets.items():
            changed = (after[k].top1 != before[k].top1).sum(-1)
            for i, pid in enumerate(s.ids):
                row = {"set": k, "paragraph": pid, "em_before": int(before[k].em[i]), "em_after": int(after[k].em[i]),
                       "nll_before": float(before[k].nll[i]), "nll_after": float(after[k].nll[i]),
                       "top1_changed": int(changed[i]), "min_margin": float(before[k].margin[i].min())}
                if new_before is not None and k == "target":
                    row |= {"em_new_before": int(new_before.em[i]), "em_new_after": int(new_after.em[i])}
                rows.append(row)
        config = st.to_dict()
        if kind != "selective":
            config.pop("selectivity_floor")
        if st.forget_loss != "npo":
            config.pop("npo_beta")
        return FineTuneResult(objective=objective, mask_kind=kind, rows=rows, weights_changed=self.weights_changed(),
                              mask_size=sum(int(m.sum()) for m in masks.values()), losses=losses,
                              seconds=time.perf_counter() - t_start, optimizer_seconds=optimizer_seconds,
                              updates_rounded_away=rounded_away,
                              provenance=Provenance.capture(model, objective=objective, mask=kind, **config))

    def _trial_inputs(self, objective: str, train_on: ParagraphSet, retain: ParagraphSet,
                      sets: dict[str, ParagraphSet]) -> dict[str, Any]:
        """What a run computes before its steps that no mask or setting changes: the sets' greedy
        references and scores before, the new continuation's scores (edit), the retain set's
        reference logits, and (filled by :meth:`_objective_mask`) the objective's gradient map.
        Kept for the last trial and reused while the weights are the original ones (every run of a
        :func:`memlens.compare_masks` trial starts there)."""
        key = trial_key(objective, train_on, *sets.values(), precision=self.model.precision)
        cached = self._trials.get(key)
        if cached is not None and self._at_original():
            return cached
        model = self.model
        self.prepare_references(*sets.values())
        refs = {k: self._references.of(v) for k, v in sets.items()}
        missing = self._references.not_recited(sets["target"])
        if missing:
            warnings.warn(f"target paragraph(s) {missing} are not memorized (EM of the true continuation < "
                          f"{sets['target'].continuation_len}); running anyway", stacklevel=4)
        with torch.no_grad():
            ref_logits = continuation_logits(model, retain.tokens, retain.prefix_len).detach()
        trial = {"refs": refs, "before": self._scores(refs), "ref_logits": ref_logits,
                 "new_before": teacher_forced_scores(model, train_on.tokens, train_on.prefix_len, self.batch_size)
                 if objective == "edit" else None, "maps": {}}
        if self._at_original():
            self._trials.put(key, trial)
        else:
            self._trials.clear()
        return trial

    def _at_original(self) -> bool:
        """Whether every weight of the trainable set is its original value."""
        return self._original is not None and all(torch.equal(p.detach(), self._original[n])
                                                  for n, p in self.params.items())

    def _check_run(self, target: ParagraphSet, retain: ParagraphSet, other: ParagraphSet | None,
                   st: "FineTuneSettings") -> dict[str, ParagraphSet]:
        """Validate a run's arguments; return the sets it scores by name."""
        if len(target) == 0:
            raise InputError("no target paragraphs: the target set is empty (e.g. a scan found no memorized "
                             "paragraph); pass at least one paragraph to unlearn or edit")
        if len(retain) == 0:
            raise InputError("the retain set is empty")
        target.check_compatible(retain, "the target and the retain set")
        retain = drop_targets(retain, target, "the retain set")
        if other is not None:
            target.check_compatible(other, "the target and the other memorized set")
        sets = {"target": target, "retain": retain}
        if other is not None and len(other):  # an empty set (the only memorized paragraph is the target) scores nothing
            sets["other_memorized"] = other
        for s in sets.values():
            s.validate(self.model.vocab_size, self.model.n_ctx)
        return sets

    def _scores(self, refs: dict[str, ParagraphSet]) -> dict[str, Any]:
        """EM, NLL, top-1 tokens and margins of every set against its reference continuation (all
        sets in the same batched forward passes)."""
        joined = ParagraphSet.concat(refs.values())
        scores = teacher_forced_scores(self.model, joined.tokens, joined.prefix_len, self.batch_size, predictions=True)
        out, start = {}, 0
        for k, r in refs.items():
            part = slice(start, start + len(r))
            out[k] = ContinuationScores(scores.em[part], scores.nll[part], scores.token_nll[part], None,
                                        scores.top1[part], scores.margin[part])
            start += len(r)
        return out

    def _objective_mask(self, objective: str, train_on: ParagraphSet, retain: ParagraphSet, mask_kind: Any,
                        st: "FineTuneSettings", trial: dict[str, Any]) -> SparseMask:
        """The run's mask; top-k and selective masks rank weights by the objective's gradient at
        the original weights (computed once per trial)."""
        objective_map, sensitivity = None, None
        if isinstance(mask_kind, str) and mask_kind in ("topk", "selective"):
            if "objective" not in trial["maps"]:
                trial["maps"]["objective"] = GradientMap(self.model, batch_size=self.batch_size, progress=self.progress).run(
                    train_on, contrast=retain, objective="contrastive" if objective == "unlearn" else "nll", progress=False)
            objective_map = trial["maps"]["objective"]
            if mask_kind == "selective":
                sensitivity = self.retain_sensitivity(retain)
        return self.make_mask(mask_kind, st.fraction, objective_map, st.seed, sensitivity, st.selectivity_floor,
                              random_draw=st.random_mask)

    def prepare_references(self, *sets: ParagraphSet) -> None:
        """Compute and cache the original model's greedy continuation of every paragraph of
        ``sets`` at once (the model must hold its original weights); a recited paragraph is its
        own continuation and is not decoded (:class:`memlens.analyses.trial_cache.GreedyReferences`).
        :func:`compare_masks` calls it with every trial's sets before the first run."""
        self._references.prepare(*sets)

    def reference(self, paragraphs: ParagraphSet) -> ParagraphSet:
        """The paragraphs with the original model's greedy continuation in place of their own
        (cached per paragraph; the model must hold its original weights the first time)."""
        return self._references.of(paragraphs)

    def _optimize(self, loss_fn: Any, opt: MaskedAdam, steps: int, lr: float) -> list[float]:
        """``steps`` masked Adam steps on ``loss_fn``; the caller rewinds ``opt`` on any error."""
        losses: list[float] = []
        restored = "the weights were restored to their values before this run; lower the learning rate"
        with only_trainable(self.model.tl_model, opt.trainable):
            for step in range(steps):
                loss = loss_fn()
                if not torch.isfinite(loss):
                    raise InputError(f"the loss became {loss.item()} at step {step} with lr={lr}; {restored}")
                opt.zero_grad()
                loss.backward()
                try:
                    opt.step()
                except RuntimeError as e:
                    raise InputError(f"the optimizer step failed at step {step} with lr={lr} ({e}); {restored}") from None
                if not opt.all_finite():
                    raise InputError(f"weights became non-finite at step {step} with lr={lr}; {restored}")
                losses.append(loss.item())
        return losses


def drop_targets(retain: ParagraphSet, target: ParagraphSet, what: str) -> ParagraphSet:
    """``retain`` without the paragraphs that are also targets (by id, or by identical tokens), with
    a warning naming them: a paragraph cannot be unlearned and kept at once. An
    :class:`InputError` when nothing is left."""
    ids = set(target.ids)
    rows = {tuple(t.tolist()) for t in target.tokens}
    both = [pid in ids or tuple(t.tolist()) in rows for pid, t in zip(retain.ids, retain.tokens)]
    if not any(both):
        return retain
    named = [pid for pid, b in zip(retain.ids, both) if b]
    if all(both):
        raise InputError(f"{what} holds only target paragraphs ({named[:5]}); give non-memorized paragraphs to keep")
    warnings.warn(f"{what} also holds target paragraph(s) {named[:5]}; they are left out of it", stacklevel=3)
    return retain.filter([not b for b in both])
