"""HeadLocalizer: which attention head holds memorized paragraphs (Stoehr et al., 2024,
Section 6 and the activation patching of its appendix), with every kind of evidence in one table.

Evidence per (layer, head), each turned into "larger = more implicated":

- ``gradient`` / ``contrastive``: parameter-gradient scores of W_Q, W_K, W_V, W_O summed
  (GradientMap, NLL objective on the memorized set; contrastive against the non-memorized set).
  At the model's own weights the contrastive objective's KL term has zero gradient, so the
  contrastive map equals the NLL map (|-g| = |g|): it is reported, not counted twice in the
  combined rank;
- ``activation_gradient``: |dNLL/dh| of q, k, v, z (max over d_head, mean over tokens), averaged;
- ``patching``: exact activation patching of the head's output z between each memorized
  paragraph and its perturbed version: the noising effect (nats), the direction that removes
  the head's clean signal as ablation does (denoising and q/k/v are detail columns);
- ``attribution``: the gradient x activation-difference estimate of the same (not in the
  combined rank: it approximates ``patching``);
- ``rare_attention``: minus the Kendall tau between prefix-token rarity rank and attention
  from the first continuation token (the paper's -0.97 becomes 0.97).

The combined rank orders heads by a weighted mean of their ranks over the evidence kinds that
were computed: causal evidence (``patching``) weighs as much as all correlational kinds together
(``causal_share=0.5``), since an intervention says more than a gradient or an attention weight.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from memlens.analyses.base import Analysis
from memlens.core.progress import tqdm

from memlens.core.data import ParagraphSet
from memlens.core.components import check_head
from memlens.core.defaults import N_SAMPLES, PATCH_POSITIONS, one_of
from memlens.core.errors import HookError, InputError
from memlens.core.results import Provenance, Result
from memlens.analyses.patching import PATCH_KINDS, attribution_patching, exact_patching, make_patch_pairs
from memlens.core.stats import rankdata, spearman
from memlens.analyses.frequency import UnigramCounts

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from memlens.core.model import HookedModel
    from memlens.analyses.rare_attention import RareAttentionResult
    from memlens.viz.circuits import ViewList

EVIDENCE = ("gradient", "contrastive", "activation_gradient", "patching", "attribution", "rare_attention")
COMBINED = ("gradient", "activation_gradient", "patching", "rare_attention")
CAUSAL = ("patching",)
_GRAD_KINDS = ("W_Q", "W_K", "W_V", "W_O")
_ACT_KINDS = ("q", "k", "v", "z")


@dataclass(frozen=True, kw_only=True)
class HeadReport(Result):
    """Per-head evidence of memorization.

    Attributes:
        columns: ``[layer, head]`` tensors by column name: one summary column per evidence kind
            (see the module docstring) and detail columns (``gradient_W_Q``, ``patching_z_noising``,
            ``attribution_v_denoising``, ``rare_token_tau``, ...).
        evidence: the evidence kinds computed; combined_from: those in the combined rank.
        agreement: Spearman correlation of attribution vs exact patching per
            ``{kind}_{direction}`` over heads.
        notes: what was skipped or replaced, and why.
        rare: the attention-to-rare-tokens result (for views), when computed.
        weights: weight of each combined kind in the combined rank (1 where absent).
        provenance: model, versions and the localizer's settings.
    """

    n_layers: int
    n_heads: int
    columns: dict[str, Float[Tensor, "layer head"]]
    evidence: list[str]
    combined_from: list[str]
    agreement: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    n_paragraphs: int = 0
    n_patch_pairs: int = 0
    rare: "RareAttentionResult | None" = field(default=None, repr=False)
    weights: dict[str, float] = field(default_factory=dict)
    provenance: Provenance = field(default_factory=Provenance)

    def with_columns(self, **columns: Float[Tensor, "layer head"]) -> "HeadReport":
        """A copy with more detail columns (e.g. ``ablation_em_drop``); this report is unchanged."""
        for name, col in columns.items():
            if tuple(col.shape) != (self.n_layers, self.n_heads):
                raise InputError(f"column {name!r} has shape {tuple(col.shape)}, expected ({self.n_layers}, {self.n_heads})")
        return replace(self, columns={**self.columns, **{k: v.float() for k, v in columns.items()}})

    def summary(self) -> dict[str, Any]:
        """The five most implicated heads with their evidence, the attribution/exact agreement
        and the notes."""
        top = self.top(5)[["layer", "head", "combined_rank", *self.evidence]].round(4)
        return {"top": top.to_dict(orient="records"), "agreement_attribution_vs_exact": self.agreement,
                "notes": list(self.notes), "n_paragraphs": self.n_paragraphs, "n_patch_pairs": self.n_patch_pairs}

    def rank(self, kind: str) -> Float[Tensor, "layer head"]:
        """Rank of every head under one column (1 = most implicated; ties share the mean rank)."""
        if kind not in self.columns:
            raise InputError(f"no evidence column {kind!r}; have {sorted(self.columns)}")
        v = self.columns[kind].flatten()
        v = torch.where(v.isnan(), torch.full_like(v, -float("inf")), v)
        return rankdata((-v).tolist()).reshape(self.n_layers, self.n_heads).float()

    @property
    def combined_score(self) -> Float[Tensor, "layer head"]:
        """Weighted mean rank over :attr:`combined_from` (lower = more implicated; weights in
        :attr:`weights`, 1 where absent)."""
        w = torch.tensor([float(self.weights.get(k, 1.0)) for k in self.combined_from])
        ranks = torch.stack([self.rank(k) for k in self.combined_from])
        return (ranks * w[:, None, None]).sum(0) / w.sum()

    @property
    def combined_rank(self) -> Float[Tensor, "layer head"]:
        """1 = most implicated head; ties broken by the patching rank, then by position."""
        score = self.combined_score.flatten()
        tie = self.rank("patching").flatten() if "patching" in self.columns else torch.zeros_like(score)
        order = sorted(range(len(score)), key=lambda i: (float(score[i]), float(tie[i]), i))
        out = torch.empty(len(score))
        out[order] = torch.arange(1, len(score) + 1, dtype=torch.float)
        return out.reshape(self.n_layers, self.n_heads)

    def where(self, layer: int, head: int) -> dict[str, int]:
        """Where one head ranks under every summary evidence kind and combined."""
        check_head(layer, head, self.n_layers, self.n_heads)
        out = {k: int(self.rank(k)[layer, head]) for k in self.evidence}
        out["combined"] = int(self.combined_rank[layer, head])
        return out

    def to_dataframe(self) -> "pd.DataFrame":
        """One row per (layer, head), sorted by ``combined_rank``: ``layer, head, combined_rank,
        combined_score``, one column per evidence kind, ``rank_<kind>``, then detail columns."""
        import pandas as pd

        L, H = self.n_layers, self.n_heads
        data: dict[str, Any] = {"layer": [l for l in range(L) for _ in range(H)], "head": list(range(H)) * L,
                                "combined_rank": self.combined_rank.flatten().long().tolist(),
                                "combined_score": self.combined_score.flatten().tolist()}
        for k in self.evidence:
            data[k] = self.columns[k].flatten().tolist()
        for k in self.evidence:
            data[f"rank_{k}"] = self.rank(k).flatten().long().tolist()
        for k, v in self.columns.items():
            if k not in data:
                data[k] = v.flatten().tolist()
        return pd.DataFrame(data).sort_values(["combined_rank"]).reset_index(drop=True)

    def top(self, k: int = 5) -> "pd.DataFrame":
        """The ``k`` most implicated heads with their evidence."""
        return self.to_dataframe().head(k)

    def evidence_text(self, layer: int, head: int) -> str:
        """One line saying why a head ranks where it does."""
        parts = [f"{k} #{r}" for k, r in self.where(layer, head).items() if k != "combined"]
        return f"L{layer}H{head}: combined #{int(self.combined_rank[layer, head])} (" + ", ".join(parts) + ")"

    def plot(self, kind: str = "combined") -> "go.Figure":
        """Layer x head heatmap of one evidence column (``"combined"``: the combined rank)."""
        from memlens.viz.heads import plot_head_grid

        z = -self.combined_rank if kind == "combined" else self.columns.get(kind)
        if z is None:
            raise InputError(f"no evidence column {kind!r}; have {sorted(self.columns)}")
        text = [[f"#{int(self.combined_rank[l, h])}" for h in range(self.n_heads)] for l in range(self.n_layers)]
        return plot_head_grid(z, f"{kind} per head" + (" (minus combined rank: brighter = more implicated)"
                                                       if kind == "combined" else ""), text=text)

    def plot_all(self) -> "go.Figure":
        """One heatmap per evidence kind (each column min-max scaled) and the combined rank."""
        from memlens.viz.heads import plot_head_panels

        panels = {k: self.columns[k] for k in self.evidence}
        panels["combined"] = self.n_layers * self.n_heads + 1 - self.combined_rank
        return plot_head_panels(panels, "Evidence per head (each panel scaled to [0, 1]; bright = implicated)")

    def attention_view(self, model: "HookedModel | None" = None, paragraphs: ParagraphSet | None = None,
                       layer: int | None = None, head: int | None = None, paragraph: int = 0,
                       unigram: UnigramCounts | None = None, *, k: int = 1) -> "ViewList":
        """circuitsvis views of one head on one paragraph: every head of its layer (click a
        thumbnail to show it), the chosen head's attention from the first continuation token, and
        the prefix coloured by rarity. See :func:`memlens.analyses.attention_views.head_views`.

        Args:
            model, paragraphs: default: the model and memorized paragraphs this report was
                computed on (kept by :meth:`HeadLocalizer.localize`; a report loaded from a file
                needs them passed).
            layer, head: default: the ``k``-th most implicated head (``k=1``: the top head).
            paragraph: which paragraph (index into ``paragraphs``).
            unigram: corpus counts for the rarity view.
            k: rank of the head shown when ``layer``/``head`` are not given.

        Returns:
            A :class:`~memlens.viz.circuits.ViewList` (shown as the views in a notebook).
        """
        from memlens.analyses.attention_views import head_views

        model = model if model is not None else getattr(self, "_model", None)
        paragraphs = paragraphs if paragraphs is not None else getattr(self, "_paragraphs", None)
        if model is None or paragraphs is None:
            raise InputError("this report does not hold its model and paragraphs (it was loaded from a file); pass "
                             "attention_view(model, paragraphs)")
        if (layer is None) != (head is None):
            raise InputError("give both layer and head, or neither (the k-th top head)")
        if layer is None:
            if not 1 <= k <= self.n_layers * self.n_heads:
                raise InputError(f"k must be from 1 to {self.n_layers * self.n_heads}, got {k}")
            row = self.top(k).iloc[k - 1]
            layer, head = int(row["layer"]), int(row["head"])
        return head_views(model, paragraphs, layer, head, paragraph, unigram)

    def _keep_inputs(self, model: "HookedModel", paragraphs: ParagraphSet) -> "HeadReport":
        """Remember (not saved) the model and paragraphs for :meth:`attention_view`."""
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_paragraphs", paragraphs)
        return self

    def _repr_html_(self) -> str:
        return self.top(10).to_html(index=False, float_format=lambda x: f"{x:.3g}")


def combined_weights(combined: Sequence[str], causal_share: float) -> dict[str, float]:
    """Weights of the evidence kinds in the combined rank: 1 for each correlational kind; the
    causal kinds together weigh ``causal_share`` of the total."""
    others = [k for k in combined if k not in CAUSAL]
    causal = [k for k in combined if k in CAUSAL]
    weights = {k: 1.0 for k in combined}
    if others:
        for k in causal:
            weights[k] = causal_share / (1 - causal_share) * len(others) / len(causal)
    return weights


class HeadLocalizer(Analysis):
    """Find the memorization head(s) of a model.

    Example::

        report = HeadLocalizer(model).localize(memorized, non_memorized)
        report.top(5); report.plot_all(); report.where(1, 2)
    """

    DEFAULT_BATCH_SIZE = 8

    def __init__(self, model: "HookedModel", *, batch_size: int | None = None, progress: bool = True,
                 precision: str | None = None) -> None:
        """
        Args:
            model: the model.
            batch_size: paragraphs per pass of every evidence kind (default :attr:`DEFAULT_BATCH_SIZE`).
            progress: show progress bars (a call's own ``progress`` wins).
        """
        super().__init__(model, batch_size=batch_size, progress=progress, precision=precision)

    def run(
        self,
        memorized: ParagraphSet,
        non_memorized: ParagraphSet | None = None,
        perturbed: ParagraphSet | None = None,
        unigram: UnigramCounts | None = None,
        evidence: Sequence[str] = EVIDENCE,
        combine: Sequence[str] = COMBINED,
        max_paragraphs: int = 16,
        patch_kinds: Sequence[str] = PATCH_KINDS,
        causal_share: float = 0.5,
        progress: bool | None = None,
        exact_top: int = 0,
        patch_positions: str = "all",
    ) -> HeadReport:
        """Compute every kind of ``evidence`` on (at most ``max_paragraphs`` of) ``memorized``.

        Args:
            memorized: memorized paragraphs (the first ``max_paragraphs`` are used).
            non_memorized: non-memorized paragraphs, needed for ``contrastive``.
            perturbed: one perturbed version per memorized paragraph (e.g. from
                ``PrefixPerturber.perturbed_paragraphs``) for ``patching`` and ``attribution``;
                built with a full random sweep when not given.
            unigram: corpus token counts for ``rare_attention``; by default the model's
                ground-truth training counts (the organism), else counts over the paragraphs (noted).
            evidence: the kinds to compute (see the module docstring).
            combine: the kinds averaged into the combined rank.
            max_paragraphs: at most this many memorized paragraphs.
            patch_kinds: activations patched per head (``z``, ``q``, ``k``, ``v``).
            causal_share: the weight of ``patching`` in the combined rank relative to the other
                kinds together (0.5: as much as all of them).
            progress: show progress bars.
            exact_top: screen every head with attribution patching and patch exactly only the
                ``exact_top`` it ranks highest (for models with hundreds of heads); 0 (default):
                patch every head exactly (``None`` is read as 0).
            patch_positions: ``all`` (a head's activation at every position, memlens's default)
                or ``perturbed`` (only at the perturbed prefix position(s), the paper's Appendix A.3).

        Returns:
            A :class:`HeadReport`: one ``[layer, head]`` column per evidence kind and detail, the
            combined rank, the attribution/exact agreement and notes on what was skipped.
        """
        progress = self._progress(progress)
        exact_top = exact_top or 0
        model = self.model
        mem, evidence, notes = self._check_localize(memorized, non_memorized, evidence, max_paragraphs, causal_share)
        columns: dict[str, Tensor] = {}
        agreement: dict[str, float] = {}
        rare, n_pairs = None, 0
        for kind in ("gradient", "contrastive"):
            if kind in evidence:
                columns.update(self._gradient(mem, non_memorized[:max_paragraphs] if kind == "contrastive" else None, kind))
        if "activation_gradient" in evidence:
            columns.update(self._activation_gradient(mem, notes))
        methods = [e for e in evidence if e in ("patching", "attribution")]
        if methods:
            pairs = self._pairs(mem, perturbed, notes, progress)
            n_pairs = len(pairs)
            if patch_positions not in PATCH_POSITIONS:
                raise InputError(f"patch_positions must be {one_of(PATCH_POSITIONS)}, got {patch_positions!r}")
            cols, agreement = self._patching(pairs, methods, self._usable_kinds(patch_kinds, notes), progress,
                                             exact_top, notes, None if patch_positions == "all" else patch_positions)
            columns.update(cols)
        if "rare_attention" in evidence:
            rare = self._rare(mem, unigram, notes, progress)
            if rare is not None:
                columns |= {"rare_attention": -rare.rank_tau, "rare_tau": rare.rank_tau, "rare_token_tau": rare.token_tau}
            else:
                evidence.remove("rare_attention")
        combined = [k for k in combine if k in evidence]
        if not combined:
            raise InputError(f"none of combine={list(combine)} was computed (evidence: {evidence})")
        report = HeadReport(
            n_layers=model.n_layers, n_heads=model.n_heads, columns=columns, evidence=evidence, combined_from=combined,
            agreement=agreement, notes=notes, n_paragraphs=len(mem), n_patch_pairs=n_pairs, rare=rare,
            weights=combined_weights(combined, causal_share),
            provenance=Provenance.capture(model, evidence=evidence, combine=list(combine), max_paragraphs=max_paragraphs,
                                          patch_kinds=list(patch_kinds), causal_share=causal_share,
                                          patch_positions=patch_positions,
                                          exact_top=exact_top))
        return report._keep_inputs(model, mem)

    #: the verb of earlier versions (:meth:`run`)
    localize = run

    def _check_localize(self, memorized: ParagraphSet, non_memorized: ParagraphSet | None, evidence: Sequence[str],
                        max_paragraphs: int, causal_share: float) -> tuple[ParagraphSet, list[str], list[str]]:
        """Validate the arguments; return the memorized paragraphs used, the evidence kinds that
        can be computed and the notes on those that cannot."""
        unknown = [e for e in evidence if e not in EVIDENCE]
        if unknown:
            raise InputError(f"unknown evidence {unknown}; choose from {EVIDENCE}")
        if len(memorized) == 0:
            raise InputError("HeadLocalizer needs at least one memorized paragraph")
        if not 0.0 <= causal_share < 1.0:
            raise InputError(f"causal_share must be in [0, 1), got {causal_share}")
        memorized.validate(self.model.vocab_size, self.model.n_ctx)
        mem = memorized[:max_paragraphs]
        kinds, notes = list(dict.fromkeys(evidence)), []
        if non_memorized is not None and len(non_memorized):
            mem.check_compatible(non_memorized, "memorized and non-memorized paragraphs")
        if "contrastive" in kinds:
            if non_memorized is None or len(non_memorized) == 0:
                kinds.remove("contrastive")
                notes.append("contrastive gradient skipped: no non-memorized paragraphs given")
            else:
                notes.append("contrastive = NLL gradient map here: the KL term's gradient is zero at the model's "
                             "own weights; it is not counted in the combined rank by default")
        return mem, kinds, notes

    # --- evidence ---------------------------------------------------------------------------
    def _gradient(self, mem: ParagraphSet, contrast: ParagraphSet | None, name: str) -> dict[str, Tensor]:
        from memlens.analyses.gradients import GradientMap

        keys = [(L, k, h) for L in range(self.model.n_layers) for k in _GRAD_KINDS for h in range(self.model.n_heads)]
        gmap = GradientMap(self.model).compute(mem, contrast=contrast, keep_weight_grads=False, components=keys,
                                               batch_size=self.batch_size, progress=False)
        cols = {f"{name}_{k}": gmap.grid(k) for k in _GRAD_KINDS}
        cols[name] = sum(cols.values())
        return cols

    def _activation_gradient(self, mem: ParagraphSet, notes: list[str]) -> dict[str, Tensor]:
        from memlens.analyses.activation_gradients import activation_gradients

        kinds = self._usable_kinds(_ACT_KINDS, notes)
        res = activation_gradients(self.model, mem, kinds=kinds, batch_size=self.batch_size, progress=False)
        cols = {f"activation_gradient_{k}": res.head_scores(k) for k in kinds}
        cols["activation_gradient"] = torch.stack(list(cols.values())).mean(0)
        return cols

    def _usable_kinds(self, kinds: Sequence[str], notes: list[str]) -> list[str]:
        """The per-head hook kinds this model has; the others are dropped with a note."""
        names = set(self.model.hook_names)
        ok = [k for k in kinds if f"blocks.0.attn.hook_{k}" in names]
        missing = [k for k in kinds if k not in ok]
        if missing:
            notes.append(f"{self.model.name} has no hook_{'/'.join(missing)}; those activations are skipped")
        if not ok:
            raise HookError(f"{self.model.name} exposes none of the per-head hooks hook_{'/'.join(kinds)}")
        return ok

    def _pairs(self, mem: ParagraphSet, perturbed: ParagraphSet | None, notes: list[str], progress: bool = True):
        if perturbed is None:
            from memlens.analyses.perturb import PrefixPerturber

            perturbed = PrefixPerturber(self.model).perturbed_paragraphs(mem, positions="all",
                                                                         progress=progress)
            notes.append(f"perturbed paragraphs built by a full random sweep ({N_SAMPLES} samples per position, worst kept)")
        else:
            originals = perturbed.metadata.get("original")
            if originals is not None:
                keep = [i for i, o in enumerate(originals) if str(o) in set(mem.ids)]
                perturbed = perturbed[keep]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pairs = make_patch_pairs(mem, perturbed)
        notes.extend(str(w.message) for w in caught)
        if len(pairs) < len(mem):
            notes.append(f"activation patching on {len(pairs)} of {len(mem)} paragraphs (the others have no perturbed "
                         "version that changes the continuation)")
        return pairs

    def _patching(self, pairs: list, wanted: list[str], kinds: list[str], progress: bool,
                  exact_top: int = 0, notes: list[str] | None = None,
                  positions: str | None = None) -> tuple[dict[str, Tensor], dict[str, float]]:
        """Mean patching effects over pairs, per method, activation and direction. With
        ``exact_top``, attribution patching (two passes per pair) screens every head first and
        exact patching runs only on the ``exact_top`` heads it ranks highest (others: NaN)."""
        methods = list(wanted)
        screen = bool(exact_top) and "patching" in methods and exact_top < self.model.n_layers * self.model.n_heads
        if screen and "attribution" not in methods:
            methods.insert(0, "attribution")
        methods.sort(key=lambda m: m != "attribution")  # the screen first
        cols: dict[str, Tensor] = {}
        heads = None
        out_kind = "z" if "z" in kinds else kinds[0]
        for method in methods:
            if method == "patching" and screen:
                screen_col = cols[f"attribution_{out_kind}_noising"].flatten()
                top = torch.nan_to_num(screen_col, nan=-float("inf")).topk(exact_top).indices.tolist()
                heads = [divmod(i, self.model.n_heads) for i in top]
                if notes is not None:
                    notes.append(f"exact patching on the {exact_top} heads that attribution patching ranks highest "
                                 f"(of {len(screen_col)}); the others' patching columns are NaN and rank last")
            cols |= self._mean_effects(pairs, method, kinds, progress, heads, positions)
        for method in wanted:
            cols[method] = cols[f"{method}_{out_kind}_noising"]
        if "attribution" not in wanted:
            cols = {k: v for k, v in cols.items() if not k.startswith("attribution")}
        agreement = {}
        if set(wanted) == {"patching", "attribution"}:
            for k in kinds:
                for d in ("noising", "denoising"):
                    a, b = cols[f"patching_{k}_{d}"].flatten(), cols[f"attribution_{k}_{d}"].flatten()
                    ok = ~a.isnan()
                    agreement[f"{k}_{d}"] = round(spearman(a[ok].tolist(), b[ok].tolist()), 4)
        return cols, agreement

    def _mean_effects(self, pairs: list, method: str, kinds: list[str], progress: bool,
                      heads: list[tuple[int, int]] | None, positions: str | None) -> dict[str, Tensor]:
        L, H = self.model.n_layers, self.model.n_heads
        sums: dict[str, Tensor] = {}
        for pair in tqdm(pairs, desc=f"{'exact' if method == 'patching' else 'attribution'} patching",
                         disable=not progress):
            if method == "patching":
                res = exact_patching(self.model, pair, kinds=kinds, heads=heads, batch_size=self.batch_size,
                                     positions=positions)
            else:
                res = attribution_patching(self.model, pair, kinds=kinds, positions=positions)
            for direction in ("noising", "denoising"):
                for ki, k in enumerate(kinds):
                    key = f"{method}_{k}_{direction}"
                    sums[key] = sums.get(key, torch.zeros(L, H)) + getattr(res, direction)[:, ki].float() / len(pairs)
        return sums

    def _rare(self, mem: ParagraphSet, unigram: UnigramCounts | None, notes: list[str], progress: bool):
        from memlens.analyses.rare_attention import rare_token_attention

        if "blocks.0.attn.hook_pattern" not in set(self.model.hook_names):
            notes.append(f"{self.model.name} has no hook_pattern; attention to rare tokens skipped")
            return None
        if unigram is None:
            unigram = UnigramCounts.default_for(self.model, mem)
            if getattr(self.model.ground_truth, "unigram_counts", None) is None:
                notes.append("no unigram counts given: token rarity counted over the memorized paragraphs only "
                             "(pass UnigramCounts.from_file for corpus counts)")
        return rare_token_attention(self.model, mem, unigram, batch_size=self.batch_size, progress=progress)
