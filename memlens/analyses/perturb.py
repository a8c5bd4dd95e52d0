"""PrefixPerturber: how fragile is a recited paragraph? (Stoehr et al., 2024, Section 4)

Every prefix position of every paragraph is replaced by other tokens, one at a time, and the
greedy continuation is scored against the original continuation. EM comes from teacher forcing
(exact for greedy decoding), and the keys and values of the unperturbed positions before the
perturbed one are computed once per paragraph and reused for every replacement there.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from memlens.analyses.base import Analysis
from memlens.analyses.trial_cache import GreedyReferences
from memlens.core.progress import tqdm

from memlens.core.data import ParagraphSet
from memlens.core.defaults import N_SAMPLES, STRATEGIES, WORST_TIES, WorstTies, one_of
from memlens.core.errors import InputError
from memlens.core.compat import cache_keyword, returned_cache
from memlens.core.metrics import greedy_decode, score_logits
from memlens.core.results import Provenance, Result

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from memlens.core.model import HookedModel

Strategy = str | Callable[[Tensor, int, int, torch.Generator], int]
COLUMNS = ["paragraph", "position", "sample", "token", "em", "nll", "em_drop"]


@dataclass(frozen=True, kw_only=True)
class PerturbationResult(Result):
    """One row per (paragraph, position, sample).

    Attributes:
        paragraphs: the unperturbed paragraphs, with the reference continuation (the model's
            greedy one by default); base_em / base_nll: their EM and NLL.
        index, position, sample, token, em, nll: per row (``index`` is the paragraph's position
            in ``paragraphs``); EM is of the greedy continuation of the perturbed prefix against
            the reference continuation; NLL (nats/token) of the reference continuation.
        strategy: how replacements were chosen.
        provenance: model, versions and the sweep's settings (seed, n_samples, reference).
    """

    paragraphs: ParagraphSet
    base_em: Int[Tensor, " n"] = field(repr=False)
    base_nll: Float[Tensor, " n"] = field(repr=False)
    index: Int[Tensor, " rows"] = field(repr=False)
    position: Int[Tensor, " rows"] = field(repr=False)
    sample: Int[Tensor, " rows"] = field(repr=False)
    token: Int[Tensor, " rows"] = field(repr=False)
    em: Int[Tensor, " rows"] = field(repr=False)
    nll: Float[Tensor, " rows"] = field(repr=False)
    strategy: str
    provenance: Provenance = field(default_factory=Provenance)

    def summary(self) -> dict[str, Any]:
        """Paragraphs, perturbations and the mean EM drop per perturbed position."""
        return {"strategy": self.strategy, "n_paragraphs": len(self.paragraphs), "n_perturbations": len(self.em),
                "mean_em_drop": round(self.mean_em_drop(), 3), "mean_base_em": round(float(self.base_em.float().mean()), 3)}

    def plot(self, other: "PerturbationResult | None" = None, labels: Sequence[str] = ("this set", "other")) -> "go.Figure":
        """Mean EM drop per prefix position (and for ``other``, e.g. non-memorized)."""
        from memlens.viz.perturbation import plot_em_drop_by_position

        return plot_em_drop_by_position([(r.per_position(), lab) for r, lab in zip((self, other), labels) if r is not None])

    @property
    def em_drop(self) -> Tensor:
        """EM of the unperturbed paragraph minus EM after the perturbation (tokens)."""
        return self.base_em[self.index] - self.em

    def to_dataframe(self) -> "pd.DataFrame":
        import pandas as pd

        return pd.DataFrame({
            "paragraph": [self.paragraphs.ids[i] for i in self.index.tolist()],
            "position": self.position.tolist(), "sample": self.sample.tolist(), "token": self.token.tolist(),
            "em": self.em.tolist(), "nll": self.nll.tolist(), "em_drop": self.em_drop.tolist(),
            "original_token": self.paragraphs.tokens[self.index, self.position].tolist(),
            "nll_change": (self.nll - self.base_nll[self.index]).tolist(),
        })

    def mean_em_drop(self) -> float:
        """Mean EM drop per perturbed position (the paper: 12.19 memorized vs 33.12 non-memorized)."""
        return float(self.em_drop.float().mean())

    def per_position(self) -> "pd.DataFrame":
        """Mean EM drop and NLL change per prefix position, over paragraphs and samples."""
        df = self.to_dataframe()
        return df.groupby("position")[["em_drop", "nll_change"]].mean().reset_index()

    def worst(self, ties: WorstTies = "nll") -> "pd.DataFrame":
        """Per paragraph, the single replacement that lowers EM most.

        Args:
            ties: among replacements with the same lowest EM: ``nll`` = the higher NLL, then the
                earlier position, then the lower sample (memlens's default); ``earliest`` = the
                earliest position, then the lower sample (the official code's strict ``em < min_em``
                over positions in order).
        """
        if ties not in WORST_TIES:
            raise InputError(f"unknown tie rule {ties!r}; use {one_of(WORST_TIES)}")
        df = self.to_dataframe()
        if ties == "nll":
            df = df.sort_values(["paragraph", "em", "nll", "position", "sample"], ascending=[True, True, False, True, True])
        else:
            df = df.sort_values(["paragraph", "em", "position", "sample"], ascending=True)
        worst = df.groupby("paragraph", sort=False).head(1)
        order = {pid: i for i, pid in enumerate(self.paragraphs.ids)}
        return worst.sort_values("paragraph", key=lambda s: s.map(order)).reset_index(drop=True)

    def compare(self, other: "PerturbationResult", labels: Sequence[str] = ("memorized", "non-memorized")) -> "PerturbationComparison":
        """This set (e.g. memorized) against ``other`` (e.g. non-memorized): mean EM drops with
        bootstrap intervals, per-position curves and distributions."""
        return PerturbationComparison(this=self, other=other, labels=(str(labels[0]), str(labels[1])),
                                      provenance=self.provenance)

    def plot_distribution(self, other: "PerturbationResult", labels: Sequence[str] = ("memorized", "non-memorized")) -> "go.Figure":
        """Histograms of the EM drop per perturbation here and in ``other``."""
        from memlens.viz.perturbation import plot_em_drop_distribution

        return plot_em_drop_distribution([(self.em_drop.tolist(), labels[0]), (other.em_drop.tolist(), labels[1])])

    def paragraph_drops(self, paragraph: int) -> Tensor:
        """Mean EM drop caused by each prefix position of one paragraph (NaN where not perturbed)."""
        out = torch.full((self.paragraphs.prefix_len,), float("nan"))
        sel = self.index == paragraph
        for p in self.position[sel].unique().tolist():
            out[p] = self.em_drop[sel & (self.position == p)].float().mean()
        return out

    def plot_paragraph(self, model: "HookedModel", paragraph: int) -> "go.Figure":
        """EM drop per prefix position of one paragraph, labelled with its tokens."""
        from memlens.viz.perturbation import plot_paragraph_drops

        return plot_paragraph_drops(self.paragraph_drops(paragraph), model.to_str_tokens(self.paragraphs.prefixes[paragraph]),
                                    f"Paragraph {self.paragraphs.ids[paragraph]}: EM drop per replaced prefix token")

    def token_view(self, model: "HookedModel", paragraph: int) -> str:
        """HTML: the paragraph's prefix with each token coloured by the EM drop its replacement
        causes (white 0 .. red = the whole continuation), then the continuation in grey."""
        from memlens.viz.perturbation import drop_tokens_html

        return drop_tokens_html(model.to_str_tokens(self.paragraphs.prefixes[paragraph]), self.paragraph_drops(paragraph),
                                float(self.paragraphs.continuation_len),
                                model.to_string(self.paragraphs.continuations[paragraph]))

    def _repr_html_(self) -> str:
        return self.per_position().to_html(index=False)


@dataclass(frozen=True, kw_only=True)
class PerturbationComparison(Result):
    """Two perturbation sweeps side by side (the paper's Section 5: memorized paragraphs lose
    less EM per perturbed prefix token than non-memorized ones, 12.19 vs 33.12).

    Attributes:
        this, other: the two sweeps; labels: their names (default memorized, non-memorized).
    """

    this: PerturbationResult
    other: PerturbationResult
    labels: tuple[str, str] = ("memorized", "non-memorized")
    provenance: Provenance = field(default_factory=Provenance)

    def _paragraph_means(self, res: PerturbationResult) -> Tensor:
        drop = res.em_drop.float()
        sums = torch.zeros(len(res.paragraphs)).index_add_(0, res.index, drop)
        counts = torch.zeros(len(res.paragraphs)).index_add_(0, res.index, torch.ones_like(drop))
        return (sums / counts)[counts > 0]

    def summary(self) -> dict[str, Any]:
        """Mean EM drop per perturbed position of each set, its bootstrap 95% interval over
        paragraphs, the difference and the paragraph counts (``mean_em_drop`` / ``_other`` keep
        the keys of the dict this call used to return)."""
        from memlens.core.stats import bootstrap_mean_ci

        a, b = self.this.mean_em_drop(), self.other.mean_em_drop()
        ci_a, ci_b = (bootstrap_mean_ci(self._paragraph_means(r)) for r in (self.this, self.other))
        return {"labels": list(self.labels), "mean_em_drop": a, "mean_em_drop_other": b, "difference": a - b,
                "ci95_paragraph_mean": [round(x, 3) for x in ci_a], "ci95_paragraph_mean_other": [round(x, 3) for x in ci_b],
                "n_paragraphs": len(self.this.paragraphs), "n_paragraphs_other": len(self.other.paragraphs)}

    def __getitem__(self, key: str) -> Any:
        """``comparison["mean_em_drop"]``: a key of :meth:`summary` (as when ``compare`` returned a dict)."""
        return self.summary()[key]

    def to_dataframe(self) -> "pd.DataFrame":
        """Mean EM drop and NLL change per prefix position, one row per (set, position)."""
        import pandas as pd

        parts = [r.per_position().assign(set=label) for r, label in zip((self.this, self.other), self.labels)]
        return pd.concat(parts, ignore_index=True)[["set", "position", "em_drop", "nll_change"]]

    def plot(self) -> "go.Figure":
        """Mean EM drop per prefix position, one line per set."""
        return self.this.plot(self.other, labels=self.labels)

    def plot_distribution(self) -> "go.Figure":
        """Histograms of the EM drop per perturbation, one per set."""
        return self.this.plot_distribution(self.other, labels=self.labels)


class PrefixPerturber(Analysis):
    """Replace one prefix token at a time and measure how much of the continuation survives.

    Example::

        pert = PrefixPerturber(model)
        res = pert.sweep(memorized, strategy="random", n_samples=4)
        res.mean_em_drop(); res.per_position(); res.worst(); res.plot()
        edited = pert.perturbed_paragraphs(memorized)      # for SparseFineTuner.edit
    """

    DEFAULT_BATCH_SIZE = 64

    def __init__(self, model: "HookedModel", *, batch_size: int | None = None, progress: bool = True,
                 precision: str | None = None) -> None:
        """
        Args:
            model: the model.
            batch_size: perturbed paragraphs per forward pass (default :attr:`DEFAULT_BATCH_SIZE`).
            progress: show progress bars (a call's own ``progress`` wins).
        """
        super().__init__(model, batch_size=batch_size, progress=progress, precision=precision)

    def run(
        self,
        paragraphs: ParagraphSet,
        positions: str | Sequence[int] = "all",
        strategy: Strategy = "random",
        n_samples: int = N_SAMPLES,
        seed: int = 0,
        reference: str = "greedy",
        reuse_cache: bool = True,
        progress: bool | None = None,
        skip_position_0: bool = False,
        allow_original: bool = False,
    ) -> PerturbationResult:
        """Every (paragraph, position, sample) perturbation and its EM / NLL.

        Args:
            paragraphs: the paragraphs whose prefixes are perturbed.
            positions: ``"all"`` or a list of prefix positions to perturb.
            strategy: ``random`` (a uniform token other than the original), ``second_best`` (the
                model's most likely tokens at that position other than the original, in order:
                sample 0 is the second choice where the original is the first; position 0 has no
                prediction and is skipped), ``similar`` (the token whose input embedding is closest
                in cosine to the original's, s-th closest), ``cumulative`` (the official code's
                ``single_tok_perturb=False``: one random prefix is drawn per paragraph and sample,
                and the row of position p replaces every position from the first perturbed one
                up to p with it; the code labels that row p+1), or a callable
                ``(paragraph_tokens, position, sample, generator) -> token id``.
            n_samples: replacements per position.
            seed: seed of the random replacements.
            reference: ``"greedy"`` (default, the paper's) scores against the model's own greedy
                continuation of the unperturbed prefix, which for a memorized paragraph is its true
                continuation, so non-memorized paragraphs get a meaningful EM drop too; ``"true"``
                scores against the paragraph's true continuation.
            reuse_cache: compute the keys/values of the positions before the perturbed one once
                per paragraph (``False`` recomputes everything, for checking).
            progress: show a progress bar.
            skip_position_0: never perturb position 0 (the official code keeps it as a BOS-like
                anchor and uses it as the unperturbed baseline).
            allow_original: ``random`` and ``cumulative`` draw uniformly over the whole vocabulary,
                the original token included (the code's ``torch.randint``); by default the
                original is excluded, so that every row is a real change.

        Returns:
            A :class:`PerturbationResult`, one row per perturbation; EM in tokens, NLL in nats/token.
        """
        progress = self._progress(progress)
        model = self.model
        pos_list = self._check_sweep(paragraphs, positions, strategy, n_samples, reference, skip_position_0)
        P = paragraphs.prefix_len
        if reference == "greedy":  # a recited paragraph is its own greedy continuation: only the others are decoded
            cont = GreedyReferences(model, self.batch_size).of(paragraphs).continuations
            paragraphs = ParagraphSet(torch.cat([paragraphs.prefixes, cont], 1), P, paragraphs.continuation_len,
                                      paragraphs.ids, paragraphs.texts, paragraphs.metadata)
        name = strategy if isinstance(strategy, str) else getattr(strategy, "__name__", "callable")
        gen = torch.Generator().manual_seed(seed)
        use_cache = reuse_cache and model.hf_model is not None and strategy != "cumulative"
        self._plain = model.plain_model() if use_cache else None
        cols: dict[str, list[Tensor]] = {k: [] for k in ("index", "position", "sample", "token", "em", "nll")}
        base_em, base_nll = [], []
        n_par = max(1, self.batch_size // n_samples)
        bar = tqdm(total=len(paragraphs) * len(pos_list), desc=f"prefix perturbation ({name})", disable=not progress)
        for start in range(0, len(paragraphs), n_par):
            idx = list(range(start, min(start + n_par, len(paragraphs))))
            em, nll = self._sweep_batch(paragraphs, idx, pos_list, strategy, n_samples, gen, use_cache, cols, bar,
                                        allow_original, 1 if skip_position_0 else 0)
            base_em.append(em)
            base_nll.append(nll)
        bar.close()
        c = {k: torch.cat(v) for k, v in cols.items()}
        order = torch.argsort(c["index"] * (P + 1) * n_samples + c["position"] * n_samples + c["sample"])
        c = {k: v[order] for k, v in c.items()}
        return PerturbationResult(
            paragraphs=paragraphs, base_em=torch.cat(base_em), base_nll=torch.cat(base_nll), strategy=name,
            **{k: c[k] for k in ("index", "position", "sample", "token", "em", "nll")},
            provenance=Provenance.capture(model, strategy=name, n_samples=n_samples, seed=seed, reference=reference,
                                          positions=positions if positions == "all" else list(pos_list),
                                          skip_position_0=skip_position_0, allow_original=allow_original))

    #: the verb of earlier versions (:meth:`run`)
    sweep = run

    def _check_sweep(self, paragraphs: ParagraphSet, positions: str | Sequence[int], strategy: Strategy,
                     n_samples: int, reference: str, skip_position_0: bool = False) -> list[int]:
        """Validate a sweep's arguments; return the prefix positions to perturb."""
        if len(paragraphs) == 0:
            raise InputError("PrefixPerturber.sweep got an empty ParagraphSet")
        if n_samples < 1:
            raise InputError(f"n_samples must be >= 1, got {n_samples}")
        paragraphs.validate(self.model.vocab_size, self.model.n_ctx)
        P = paragraphs.prefix_len
        pos_list = list(range(P)) if positions == "all" else [int(p) for p in positions]
        bad = [p for p in pos_list if not 0 <= p < P]
        if bad:
            raise InputError(f"positions {bad} out of range: the prefix has positions 0..{P - 1}")
        if reference not in ("greedy", "true"):
            raise InputError(f"reference must be 'greedy' or 'true', got {reference!r}")
        if isinstance(strategy, str) and strategy not in STRATEGIES:
            raise InputError(f"unknown strategy {strategy!r}; use one of {STRATEGIES} or a callable")
        if strategy == "second_best" or skip_position_0:
            pos_list = [p for p in pos_list if p > 0]
        if not pos_list:
            raise InputError("no prefix position to perturb")
        return pos_list

    def _sweep_batch(self, paragraphs: ParagraphSet, idx: list[int], pos_list: list[int], strategy: Strategy,
                     n_samples: int, gen: torch.Generator, use_cache: bool, cols: dict[str, list[Tensor]],
                     bar: Any, allow_original: bool = False, first: int = 0) -> tuple[Tensor, Tensor]:
        """Perturb every position of the paragraphs ``idx``; append the rows to ``cols`` and return
        the unperturbed paragraphs' EM and NLL. ``first``: the first position a cumulative
        perturbation replaces."""
        P = paragraphs.prefix_len
        tokens = paragraphs.tokens[idx].to(self.model.device)
        clean_logits, past = self._clean_pass(tokens, use_cache)
        scores = score_logits(clean_logits[:, P - 1 :], tokens[:, P:])
        drawn = None
        if strategy == "cumulative":  # one random prefix per paragraph and sample: [paragraphs * samples, P]
            drawn = self._uniform_tokens(tokens[:, :P].repeat_interleave(n_samples, 0), gen, allow_original)
        for p in pos_list:
            variants = tokens.repeat_interleave(n_samples, 0)
            if drawn is not None:  # positions from the first perturbed one up to p replaced
                new = drawn[:, p].view(len(idx), n_samples)
                variants[:, first : p + 1] = drawn[:, first : p + 1]
            else:
                new = torch.stack([self._replacements(strategy, tokens[j], p, n_samples, clean_logits[j], gen,
                                                      allow_original) for j in range(len(idx))])  # [paragraphs, samples]
                variants[:, p] = new.flatten()
            em, nll = self._score_variants(variants, p, P, past, n_samples)
            for key, value in (("index", torch.tensor(idx).repeat_interleave(n_samples)),
                               ("position", torch.full((len(variants),), p)),
                               ("sample", torch.arange(n_samples).repeat(len(idx))), ("token", new.flatten().cpu()),
                               ("em", em.cpu()), ("nll", nll.cpu())):
                cols[key].append(value)
            bar.update(len(idx))
        return scores.em.cpu(), scores.nll.cpu()

    def worst_position(self, paragraphs: ParagraphSet, **sweep_kwargs: Any) -> "pd.DataFrame":
        """For each paragraph, the single replacement that lowers EM most (see ``sweep``)."""
        return self.sweep(paragraphs, **sweep_kwargs).worst()

    def perturbed_paragraphs(
        self, paragraphs: ParagraphSet, result: PerturbationResult | None = None, ties: WorstTies = "nll",
        **sweep_kwargs: Any,
    ) -> ParagraphSet:
        """For each paragraph, its worst single-token perturbation: the perturbed prefix followed
        by the model's new greedy continuation (the target of the editing objective; ``ties`` as
        in :meth:`PerturbationResult.worst`). Metadata: ``original`` id, ``position``,
        ``original_token``, ``token``, ``em`` (of the original continuation after the perturbation)."""
        result = result if result is not None else self.sweep(paragraphs, **sweep_kwargs)
        if result.strategy == "cumulative":
            raise InputError("perturbed paragraphs are single-token perturbations; sweep with another strategy "
                             "(e.g. 'random') to make them")
        worst = result.worst(ties)
        order = [paragraphs.index_of(pid) for pid in worst["paragraph"]]
        prefixes = paragraphs.prefixes[order].clone()
        prefixes[torch.arange(len(order)), torch.tensor(worst["position"].tolist())] = torch.tensor(worst["token"].tolist())
        cont = greedy_decode(self.model, prefixes, paragraphs.continuation_len)
        return ParagraphSet(
            torch.cat([prefixes, cont], 1), paragraphs.prefix_len, paragraphs.continuation_len,
            [f"{pid}~p{p}" for pid, p in zip(worst["paragraph"], worst["position"])],
            metadata={"original": worst["paragraph"].tolist(), "position": worst["position"].tolist(),
                      "original_token": worst["original_token"].tolist(), "token": worst["token"].tolist(),
                      "em": worst["em"].tolist()},
        )

    # --- internals -------------------------------------------------------------------------
    @torch.no_grad()
    def _clean_pass(self, tokens: Int[Tensor, "batch length"], use_cache: bool) -> tuple[Tensor, Any]:
        """Logits of the unperturbed paragraphs and, with ``use_cache``, their per-layer keys/values."""
        if not use_cache:
            return self.model(tokens[:, :-1]), None
        with self.model.autocast():
            out = self._plain(tokens[:, :-1], use_cache=True)
        cache = returned_cache(out)
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        return out.logits.float(), kv

    @torch.no_grad()
    def _score_variants(self, variants: Tensor, p: int, P: int, past: Any, n_samples: int) -> tuple[Tensor, Tensor]:
        ems, nlls = [], []
        for s in range(0, len(variants), self.batch_size):
            chunk = variants[s : s + self.batch_size]
            if past is None:
                logits = self.model(chunk[:, :-1], positions_from=P - 1)
            else:
                rows = torch.arange(s, s + len(chunk)) // n_samples
                logits = self._suffix_logits(chunk, p, [(k[rows], v[rows]) for k, v in past], P)
            scores = score_logits(logits, chunk[:, P:])
            ems.append(scores.em)
            nlls.append(scores.nll)
        return torch.cat(ems), torch.cat(nlls)

    def _suffix_logits(self, chunk: Tensor, p: int, past: list[tuple[Tensor, Tensor]], P: int) -> Tensor:
        """Logits that predict the continuation tokens (positions P-1..L-2), running only positions
        p..L-2 on top of the clean keys/values of positions < p, and unembedding only the
        positions that predict continuation tokens."""
        from transformers import DynamicCache

        plain = self._plain
        n_cont = chunk.shape[1] - P
        has_keep = "logits_to_keep" in inspect.signature(plain.forward).parameters
        extra: dict[str, Any] = {"logits_to_keep": n_cont} if has_keep else {}
        if p > 0:
            cache = DynamicCache()
            for layer, (k, v) in enumerate(past):
                cache.update(k[:, :, :p].contiguous(), v[:, :, :p].contiguous(), layer)
            extra[cache_keyword(plain)] = cache
            extra["use_cache"] = True
        positions = torch.arange(p, chunk.shape[1] - 1, device=chunk.device)[None].expand(len(chunk), -1)
        with self.model.autocast():
            logits = plain(input_ids=chunk[:, p:-1], position_ids=positions, **extra).logits
        return logits[:, -n_cont:].float()

    def _replacements(self, strategy: Strategy, tokens: Tensor, p: int, n: int, clean_logits: Tensor,
                      gen: torch.Generator, allow_original: bool = False) -> Tensor:
        V = self.model.vocab_size
        orig = int(tokens[p])
        if callable(strategy):
            out = torch.tensor([int(strategy(tokens.cpu(), p, s, gen)) for s in range(n)])
        elif strategy == "random":
            out = self._uniform_tokens(torch.full((n,), orig), gen, allow_original)
        elif strategy == "second_best":
            ranked = clean_logits[p - 1].argsort(descending=True).cpu()
            out = ranked[ranked != orig][:n]
        else:
            emb = self._embeddings()
            sims = torch.nn.functional.cosine_similarity(emb, emb[orig][None], dim=-1)
            sims[orig] = -2.0
            out = sims.topk(n).indices
        if ((out < 0) | (out >= V)).any():
            bad = int(out[(out < 0) | (out >= V)][0])
            raise InputError(f"strategy {strategy!r} returned token {bad} at position {p}, outside the vocabulary [0, {V})")
        return out.to(tokens.device)

    def _uniform_tokens(self, originals: Tensor, gen: torch.Generator, allow_original: bool) -> Tensor:
        """A token per entry of ``originals`` (same shape and device), uniform over the vocabulary,
        the entry's original token excluded unless ``allow_original`` (the code's ``randint``)."""
        V = self.model.vocab_size
        if allow_original:
            return torch.randint(0, V, originals.shape, generator=gen).to(originals.device)
        draw = torch.randint(0, V - 1, originals.shape, generator=gen)
        return (draw + (draw >= originals.cpu()).long()).to(originals.device)

    def _embeddings(self) -> Tensor:
        if not hasattr(self, "_emb"):
            self._emb = self.model.tl_model.W_E.detach().float().cpu()
        return self._emb

