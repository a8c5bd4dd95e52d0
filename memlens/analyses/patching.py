"""Activation patching of attention heads between a paragraph and its perturbed version, exact
(one patched forward per cell) and by attribution (gradient x activation difference).

The paper's appendix metric: the NLL of the original token at the first continuation position
where the perturbed paragraph's continuation differs. Both inputs are cut just before that
token, so they are the same length and differ only at the perturbed prefix position(s).

Directions (effects in nats, positive = the head carries what the perturbation destroys):

- ``noising``: run the clean paragraph, patch in the head's activation from the perturbed run;
  effect = NLL(patched) - NLL(clean).
- ``denoising``: run the perturbed paragraph, patch in the clean activation;
  effect = NLL(perturbed) - NLL(patched).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from memlens.analyses.activation_gradients import per_query_head
from memlens.core.data import ParagraphSet
from memlens.core.defaults import PATCH_KINDS
from memlens.core.errors import InputError
from memlens.core.results import Provenance, Result
from memlens.core.precision import with_precision

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from memlens.core.model import HookedModel

DIRECTIONS = ("noising", "denoising")


@dataclass
class PatchPair:
    """One clean/corrupt input pair, cut before the first changed continuation token.

    Attributes:
        clean, corrupt: ``[length]`` token ids, equal except at perturbed prefix positions.
        target: the clean token whose NLL is the metric; predicted from position ``length - 1``.
        id: the clean paragraph's id; continuation_index: where in the continuation it sits.
        corrupt_target: the perturbed paragraph's own token there (-1 when not known).
    """

    id: str
    clean: Int[Tensor, " length"]
    corrupt: Int[Tensor, " length"]
    target: int
    continuation_index: int
    corrupt_target: int = -1

    @property
    def length(self) -> int:
        return len(self.clean)


@dataclass(frozen=True, kw_only=True)
class PatchingResult(Result):
    """Effects of patching every head (and position) of one clean/corrupt pair.

    Attributes:
        method: ``exact`` (one patched forward per cell) or ``attribution`` (first-order estimate).
        pair_id: the clean paragraph's id; target: the token whose NLL is the metric.
        kinds: the activations patched (``z``, ``q``, ``k``, ``v``), the second axis of the effects.
        noising, denoising: effects ``[layer, kind, head]`` (``[layer, kind, head, pos]`` when
            ``per_position``), nats; positive = the head carries what the perturbation destroys.
        clean_nll, corrupt_nll: the metric on the unpatched runs (nats).
    """

    method: str
    pair_id: str
    target: int
    kinds: tuple[str, ...]
    noising: Float[Tensor, "layer kind head *pos"] = field(repr=False)
    denoising: Float[Tensor, "layer kind head *pos"] = field(repr=False)
    clean_nll: float
    corrupt_nll: float
    per_position: bool = False
    provenance: Provenance = field(default_factory=Provenance)

    def effect(self, direction: str = "noising", kind: str = "z") -> Float[Tensor, "layer head *pos"]:
        """The effects of one direction and activation kind."""
        if direction not in DIRECTIONS:
            raise InputError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if kind not in self.kinds:
            raise InputError(f"activation {kind!r} was not patched; have {self.kinds}")
        return getattr(self, direction)[:, self.kinds.index(kind)]

    def to_dataframe(self) -> "pd.DataFrame":
        """One row per (layer, kind, head[, position]): ``noising`` and ``denoising`` effects."""
        import pandas as pd

        L, K, H = self.noising.shape[:3]
        idx = torch.cartesian_prod(*[torch.arange(n) for n in self.noising.shape]).reshape(-1, self.noising.ndim)
        data = {"layer": idx[:, 0].tolist(), "kind": [self.kinds[k] for k in idx[:, 1].tolist()],
                "head": idx[:, 2].tolist()}
        if self.per_position:
            data["position"] = idx[:, 3].tolist()
        data["noising"] = self.noising.flatten().tolist()
        data["denoising"] = self.denoising.flatten().tolist()
        return pd.DataFrame(data)

    def summary(self) -> dict[str, Any]:
        """The metric on both runs and the cell with the largest noising effect."""
        flat = self.noising.flatten()
        best = torch.unravel_index(flat.argmax(), self.noising.shape)
        cell = {"layer": int(best[0]), "kind": self.kinds[int(best[1])], "head": int(best[2]),
                "effect": round(float(flat.max()), 4)}
        return {"method": self.method, "pair": self.pair_id, "clean_nll": self.clean_nll,
                "corrupt_nll": self.corrupt_nll, "top_noising": cell}

    def plot(self, direction: str = "noising", kind: str | None = None) -> "go.Figure":
        """Layer x head heatmap of one direction's effect (``kind`` default: ``z`` if patched),
        summed over positions."""
        from memlens.viz.heads import plot_head_grid

        kind = kind or ("z" if "z" in self.kinds else self.kinds[0])
        z = self.effect(direction, kind)
        if self.per_position:
            z = z.sum(-1)
        return plot_head_grid(z, f"{self.method} patching of hook_{kind}, {direction} (pair {self.pair_id})",
                              colorscale="RdBu", zmid=0, unit=" nats")

def make_patch_pairs(paragraphs: ParagraphSet, perturbed: ParagraphSet) -> list[PatchPair]:
    """Pair every paragraph with its perturbed version (aligned by the perturbed set's
    ``original`` metadata when present, else by order). Pairs whose continuation did not change
    are left out with a warning (nothing to patch)."""
    if len(perturbed) == 0 or len(paragraphs) == 0:
        raise InputError("activation patching needs at least one paragraph and its perturbed version")
    paragraphs.check_compatible(perturbed, "the paragraphs and their perturbed versions")
    originals = perturbed.metadata.get("original")
    if originals is None:
        if len(perturbed) != len(paragraphs):
            raise InputError(f"{len(perturbed)} perturbed paragraphs for {len(paragraphs)} paragraphs; pass one per "
                             "paragraph in the same order, or a set from PrefixPerturber.perturbed_paragraphs")
        originals = list(paragraphs.ids)
    P = paragraphs.prefix_len
    pairs, unchanged = [], []
    for k, oid in enumerate(originals):
        try:
            i = paragraphs.index_of(str(oid))
        except KeyError:
            raise InputError(f"perturbed paragraph {perturbed.ids[k]!r} refers to {oid!r}, which is not among the "
                             "paragraphs given; pass the set it was perturbed from") from None
        x, y = paragraphs.tokens[i], perturbed.tokens[k]
        if torch.equal(x[:P], y[:P]):
            raise InputError(f"perturbed paragraph {perturbed.ids[k]!r} has the same prefix as {oid!r}; "
                             "nothing was perturbed")
        diff = (x[P:] != y[P:]).nonzero()
        if len(diff) == 0:
            unchanged.append(perturbed.ids[k])
            continue
        j = int(diff[0])
        pairs.append(PatchPair(str(oid), x[: P + j].clone(), y[: P + j].clone(), int(x[P + j]), j, int(y[P + j])))
    if unchanged:
        warnings.warn(f"{len(unchanged)} perturbed paragraph(s) keep the original continuation and are not "
                      f"patched: {unchanged[:5]}", stacklevel=2)
    if not pairs:
        raise InputError("no perturbed paragraph changes its continuation; activation patching has nothing to "
                         "measure (use PrefixPerturber.perturbed_paragraphs, which picks the worst position)")
    return pairs


def _hook_name(layer: int, kind: str) -> str:
    return f"blocks.{layer}.attn.hook_{kind}"


def _check_kinds(kinds: Sequence[str]) -> None:
    for k in kinds:
        if k not in PATCH_KINDS:
            raise InputError(f"unknown patching activation {k!r}; choose from {PATCH_KINDS}")


def _target_nll(logits: Float[Tensor, "batch pos vocab"], target: int) -> Float[Tensor, " batch"]:
    return -torch.log_softmax(logits[:, -1].float(), dim=-1)[:, target]


#: a patching metric (TransformerLens's ``patching_metric`` convention): logits ``[batch, pos,
#: vocab]`` of the patched runs -> one number per run ``[batch]``
PatchingMetric = Callable[[Tensor], Tensor]


def paper_metric(pair: PatchPair) -> PatchingMetric:
    """The paper's metric (Appendix A.3): the NLL (nats) of the clean token at the first changed
    continuation position, predicted from the last position of the cut pair."""
    return lambda logits: _target_nll(logits, pair.target)


def pair_positions(pair: PatchPair, positions: Sequence[int] | str | None) -> list[int] | None:
    """Positions of a pair to patch: ``None`` = every position; ``"perturbed"`` = where the clean
    and corrupt tokens differ (the perturbed prefix token(s)); or the given positions, checked."""
    if positions is None:
        return None
    if isinstance(positions, str):
        if positions != "perturbed":
            raise InputError(f"positions must be 'perturbed', a list of positions or None, got {positions!r}")
        differ = (pair.clean != pair.corrupt).nonzero().flatten().tolist()
        if not differ:
            raise InputError(f"pair {pair.id!r}: the clean and corrupt tokens do not differ; no perturbed position to patch")
        return differ
    out = sorted({int(p) for p in positions})
    if not out or out[0] < 0 or out[-1] >= pair.length:
        raise InputError(f"patch positions must lie in 0..{pair.length - 1} (the pair's length), got {list(positions)!r}")
    return out


@torch.no_grad()
@with_precision
def exact_patching(
    model: "HookedModel", pair: PatchPair, kinds: Sequence[str] = PATCH_KINDS, per_position: bool = False,
    batch_size: int = 64, heads: Sequence[tuple[int, int]] | None = None,
    positions: Sequence[int] | str | None = None, metric: PatchingMetric | None = None,
) -> PatchingResult:
    """Exact activation patching of every head (and, with ``per_position``, every position).

    Args:
        model: the model.
        pair: a clean/corrupt pair from :func:`make_patch_pairs`.
        kinds: activations to patch, per head.
        per_position: patch every (head, position) cell instead of whole heads.
        batch_size: patched forward passes per batch.
        heads: only these ``(layer, head)`` query heads (e.g. the top candidates of an
            attribution screen); the others' effects are NaN.
        positions: patch only these positions: ``"perturbed"`` (where the pair differs, the
            paper's Appendix A.3), a list (e.g. ``range(40, 50)``, the code's full-prefix range),
            or None (every position). With ``per_position`` each listed position is its own cell
            (the others NaN); without, a head is patched at all of them at once.
        metric: logits ``[batch, pos, vocab]`` -> ``[batch]`` (TransformerLens's
            ``patching_metric``); default :func:`paper_metric` (NLL of the first changed token).

    Returns:
        A :class:`PatchingResult` (``method="exact"``); effects in the metric's units (nats). One forward pass per
        cell; a grouped-query key/value head is patched once and its effect shown for each query
        head of its group.
    """
    _check_kinds(kinds)
    chosen = pair_positions(pair, positions)
    measure = metric or paper_metric(pair)
    names = [_hook_name(L, k) for L in range(model.n_layers) for k in kinds]
    clean, corrupt = pair.clean[None].to(model.device), pair.corrupt[None].to(model.device)
    clean_logits, clean_acts, _ = model.capture(clean, names)
    corrupt_logits, corrupt_acts, _ = model.capture(corrupt, names)
    base = {"clean": _metric_value(measure, clean_logits, 1)[0], "corrupt": _metric_value(measure, corrupt_logits, 1)[0]}
    T = pair.length
    # one cell per head of each activation: under grouped-query attention k and v have fewer
    # (shared) heads, patched once each and then shown for every query head that reads them
    width = {ki: clean_acts[_hook_name(0, k)].shape[2] for ki, k in enumerate(kinds)}
    wanted = None if heads is None else {(int(L), int(h)) for L, h in heads}
    grid_positions: list[Any] = list(range(T)) if per_position else [None if chosen is None else tuple(chosen)]
    allowed = None if chosen is None or not per_position else set(chosen)

    def cell(L: int, ki: int, h: int, p: Any) -> tuple:
        return (L, ki, h // (model.n_heads // width[ki]), p)

    def patched(c: tuple) -> bool:
        return (wanted is None or (c[0], c[2]) in wanted) and (allowed is None or c[3] in allowed)

    every = [(L, ki, h, p) for L in range(model.n_layers) for ki in range(len(kinds)) for h in range(model.n_heads)
             for p in grid_positions]
    cells = list(dict.fromkeys(cell(*c) for c in every if patched(c)))
    index = {c: i for i, c in enumerate(cells)}
    full = [index[cell(*c)] if patched(c) else len(cells) for c in every]
    out: dict[str, Any] = {}
    for direction, run, source in (("noising", clean, corrupt_acts), ("denoising", corrupt, clean_acts)):
        nll = torch.full((len(cells) + 1,), float("nan"))  # the last entry: heads not patched
        for s in range(0, len(cells), batch_size):
            batch = cells[s : s + batch_size]
            with model.hooks(fwd_hooks=_patch_hooks(batch, kinds, source)):
                logits = model(run.expand(len(batch), -1))
            nll[s : s + len(batch)] = torch.tensor(_metric_value(measure, logits, len(batch)))
        shape = (model.n_layers, len(kinds), model.n_heads) + ((T,) if per_position else ())
        nll = nll[torch.tensor(full)].reshape(shape)
        out[direction] = nll - base["clean"] if direction == "noising" else base["corrupt"] - nll
    return PatchingResult(method="exact", pair_id=pair.id, target=pair.target, kinds=tuple(kinds),
                          clean_nll=base["clean"], corrupt_nll=base["corrupt"], per_position=per_position,
                          provenance=Provenance.capture(model, method="exact", kinds=list(kinds),
                                                        per_position=per_position,
                                                        heads=None if heads is None else sorted(wanted),
                                                        positions=chosen, metric="paper" if metric is None else
                                                        getattr(metric, "__name__", "custom")), **out)


def _metric_value(metric: PatchingMetric, logits: Tensor, n: int) -> list[float]:
    """``metric(logits)`` as ``n`` floats; a metric of another shape gets an error that says so."""
    value = metric(logits)
    value = torch.as_tensor(value).float().detach().cpu().reshape(-1)
    if value.numel() != n:
        raise InputError(f"the patching metric must return one number per run (shape [{n}]), got "
                         f"{value.numel()} numbers; reduce over positions, not over the batch")
    return value.tolist()


def _patch_hooks(cells: list[tuple], kinds: Sequence[str], source: dict[str, Tensor]) -> list[tuple[str, Any]]:
    """One forward hook per hook point touched by ``cells``; row ``r`` of the batch gets cell ``r``'s
    head (and position) replaced by the source activation. A cell's head indexes the activation's
    own head axis (key/value heads for grouped-query k and v); its position is None (every
    position), one position, or a tuple of positions patched together."""
    by_name: dict[str, list[tuple[int, int, Any]]] = {}
    for r, (L, ki, h, p) in enumerate(cells):
        by_name.setdefault(_hook_name(L, kinds[ki]), []).append((r, h, p))
    hooks = []
    for name, rows in by_name.items():
        src = source[name][0]
        r_idx = torch.tensor([r for r, _, _ in rows])
        h_idx = torch.tensor([h for _, h, _ in rows])
        first = rows[0][2]
        p_idx = torch.tensor([p for _, _, p in rows]) if isinstance(first, int) else None
        p_set = torch.tensor(first) if isinstance(first, tuple) else None

        def hook(act: Tensor, hook: Any, r_idx: Tensor = r_idx, h_idx: Tensor = h_idx, p_idx: Tensor | None = p_idx,
                 p_set: Tensor | None = p_set, src: Tensor = src) -> Tensor:
            act = act.clone()
            if p_set is not None:
                for r, h in zip(r_idx.tolist(), h_idx.tolist()):
                    act[r, p_set, h] = src[p_set, h].to(act.dtype)
            elif p_idx is None:
                act[r_idx, :, h_idx] = src[:, h_idx].transpose(0, 1).to(act.dtype)
            else:
                act[r_idx, p_idx, h_idx] = src[p_idx, h_idx].to(act.dtype)
            return act

        hooks.append((name, hook))
    return hooks


@with_precision
def attribution_patching(
    model: "HookedModel", pair: PatchPair, kinds: Sequence[str] = PATCH_KINDS, per_position: bool = False,
    positions: Sequence[int] | str | None = None, metric: PatchingMetric | None = None,
) -> PatchingResult:
    """Attribution patching: the first-order estimate of :func:`exact_patching` from two
    forward+backward passes. noising ~ grad_clean . (a_corrupt - a_clean); denoising ~
    -grad_corrupt . (a_clean - a_corrupt), summed over d_head (and over positions unless
    ``per_position``).

    Args:
        model: the model.
        pair: a clean/corrupt pair from :func:`make_patch_pairs`.
        kinds: activations to estimate, per head.
        per_position: one estimate per (head, position).
        positions: estimate patching only these positions (as for :func:`exact_patching`): the
            sum runs over them; per position, the others are NaN.
        metric: logits ``[batch, pos, vocab]`` -> ``[batch]``, the same callable as
            :func:`exact_patching` takes (differentiable); default :func:`paper_metric`.

    Returns:
        A :class:`PatchingResult` (``method="attribution"``), shaped as :func:`exact_patching`'s.
    """
    _check_kinds(kinds)
    chosen = pair_positions(pair, positions)
    keep = None
    if chosen is not None:
        keep = torch.zeros(pair.length, dtype=torch.bool)
        keep[chosen] = True
    measure = metric or paper_metric(pair)
    names = [_hook_name(L, k) for L in range(model.n_layers) for k in kinds]

    def loss_fn(logits: Tensor) -> Tensor:
        value = measure(logits)
        if not isinstance(value, Tensor) or value.numel() != 1:
            raise InputError("the patching metric must return one number per run as a tensor (shape [1] here); "
                             "reduce over positions, not over the batch")
        return value.sum()

    runs = {}
    for which, toks in (("clean", pair.clean), ("corrupt", pair.corrupt)):
        runs[which] = model.capture(toks[None].to(model.device), names, loss_fn=loss_fn)
    out: dict[str, Any] = {}
    for direction, at, other, sign in (("noising", "clean", "corrupt", 1.0), ("denoising", "corrupt", "clean", -1.0)):
        acts, grads = runs[at][1], runs[at][2]
        per = []
        for L in range(model.n_layers):
            for k in kinds:
                n = _hook_name(L, k)
                prod = per_query_head((grads[n][0] * (runs[other][1][n][0] - acts[n][0])).sum(-1), model.n_heads, 1)  # [pos, head]
                if keep is not None:
                    prod = prod.float().masked_fill(~keep[:, None].to(prod.device), float("nan") if per_position else 0.0)
                per.append(prod.T if per_position else prod.sum(0))
        shape = (model.n_layers, len(kinds), model.n_heads) + ((pair.length,) if per_position else ())
        out[direction] = sign * torch.stack(per).reshape(shape).float().cpu()
    return PatchingResult(method="attribution", pair_id=pair.id, target=pair.target, kinds=tuple(kinds),
                          clean_nll=float(runs["clean"][0]), corrupt_nll=float(runs["corrupt"][0]),
                          per_position=per_position,
                          provenance=Provenance.capture(model, method="attribution", kinds=list(kinds),
                                                        per_position=per_position, positions=chosen,
                                                        metric="paper" if metric is None else
                                                        getattr(metric, "__name__", "custom")), **out)
