"""Activation gradients: |dL/dh| of per-head activations (q, k, v, z), max-pooled over d_head,
per token (Stoehr et al., 2024, Section 6.1)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from memlens.core.progress import tqdm

from memlens.core.data import ParagraphSet
from memlens.core.errors import InputError
from memlens.core.results import Provenance, Result
from memlens.core.precision import with_precision

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from memlens.core.model import HookedModel

ACTIVATION_KINDS = ("q", "k", "v", "z")
#: MLP activations: the input of the nonlinearity (``pre``) and its output (``post``), per layer
MLP_ACTIVATION_KINDS = ("pre", "post")


@dataclass(frozen=True, kw_only=True)
class ActivationGradientResult(Result):
    """|dL/dh| max-pooled over the hidden (d_head) dimension, per token (paper, Section 6.1).

    Attributes:
        values: ``[paragraph, layer, kind, head, position]`` for kinds ``q, k, v, z``; positions
            are those of the model input (prefix + continuation minus the last token).
        tokens: the paragraphs' tokens ``[paragraph, length]``; ids: their ids.
        mlp_values: ``[paragraph, layer, mlp_kind, position]``: the same for the MLP's
            ``hook_pre`` / ``hook_post`` (max over d_mlp), when asked for; mlp_kinds: their kinds.
    """

    values: Float[Tensor, "paragraph layer kind head pos"] = field(repr=False)
    kinds: tuple[str, ...]
    tokens: Int[Tensor, "paragraph length"] = field(repr=False)
    ids: list[str]
    prefix_len: int
    mlp_values: Float[Tensor, "paragraph layer mlp_kind pos"] | None = field(default=None, repr=False)
    mlp_kinds: tuple[str, ...] = ()
    provenance: Provenance = field(default_factory=Provenance)

    def summary(self) -> dict[str, Any]:
        """Per kind, the head (or MLP layer) with the largest mean activation gradient."""
        out: dict[str, Any] = {}
        for kind in self.kinds:
            s = self.head_scores(kind)
            layer, head = divmod(int(s.argmax()), s.shape[1])
            out[kind] = {"layer": layer, "head": head, "score": float(s.max())}
        for kind in self.mlp_kinds:
            s = self.mlp_scores(kind)
            out[f"mlp_{kind}"] = {"layer": int(s.argmax()), "score": float(s.max())}
        return out

    def mlp_scores(self, kind: str = "post") -> Float[Tensor, " layer"]:
        """One score per layer's MLP: the per-token values averaged over paragraphs and positions."""
        if self.mlp_values is None or kind not in self.mlp_kinds:
            raise InputError(f"MLP activation {kind!r} was not computed; pass mlp_kinds=({kind!r},)")
        return self.mlp_values[:, :, self.mlp_kinds.index(kind)].mean(dim=(0, 2))

    def head_scores(self, kind: str = "v", reduce: str = "mean") -> Float[Tensor, "layer head"]:
        """One score per head: the per-token values averaged (or maxed) over paragraphs and positions."""
        v = self.values[:, :, self.kinds.index(kind)]
        return v.mean(dim=(0, 3)) if reduce == "mean" else v.amax(dim=(0, 3))

    def token_scores(self, paragraph: int, layer: int, head: int, kind: str = "v") -> Float[Tensor, " pos"]:
        return self.values[paragraph, layer, self.kinds.index(kind), head]

    def to_dataframe(self) -> "pd.DataFrame":
        """One row per (layer, head, kind): mean and max of the per-token values."""
        import pandas as pd

        rows = []
        for k, kind in enumerate(self.kinds):
            v = self.values[:, :, k]
            mean, mx = v.mean(dim=(0, 3)), v.amax(dim=(0, 3))
            for L in range(v.shape[1]):
                for h in range(v.shape[2]):
                    rows.append({"layer": L, "head": h, "kind": kind, "mean": float(mean[L, h]), "max": float(mx[L, h])})
        for k, kind in enumerate(self.mlp_kinds):
            assert self.mlp_values is not None
            v = self.mlp_values[:, :, k]
            for L in range(v.shape[1]):
                rows.append({"layer": L, "head": -1, "kind": f"mlp_{kind}", "mean": float(v[:, L].mean()),
                             "max": float(v[:, L].max())})
        return pd.DataFrame(rows)

    def plot(self, kind: str = "v") -> "go.Figure":
        """Layer x head heatmap of :meth:`head_scores` of one kind."""
        from memlens.viz.heads import plot_head_grid

        return plot_head_grid(self.head_scores(kind), f"Activation gradient |dL/d{kind}| (max over d_head, mean over tokens)")

    def plot_tokens(self, model: "HookedModel", paragraph: int, layer: int, head: int, kind: str = "v") -> "go.Figure":
        """Per-token activation gradient of one head on one paragraph, with the tokens as labels."""
        from memlens.viz.tokens import plot_token_bars

        scores = self.token_scores(paragraph, layer, head, kind)
        tokens = model.to_str_tokens(self.tokens[paragraph, : len(scores)])
        colors = ["#1f77b4" if i < self.prefix_len else "#ff7f0e" for i in range(len(scores))]
        return plot_token_bars(tokens, scores, f"|dL/d{kind}| of L{layer}H{head} per token (blue: prefix, orange: continuation)",
                               "max over d_head", colors=colors)

@with_precision
def activation_gradients(
    model: "HookedModel", paragraphs: ParagraphSet, kinds: Sequence[str] = ACTIVATION_KINDS,
    batch_size: int = 8, progress: bool = True, loss_tokens: int | None = None,
    mlp_kinds: Sequence[str] = (), loss_position: int | None = None,
) -> ActivationGradientResult:
    """Gradients of each paragraph's continuation NLL w.r.t. per-head activations (q, k, v, z),
    max-pooled over d_head. One backward pass per batch: the loss is the sum of per-paragraph
    NLLs, and a paragraph's activations affect only its own term.

    Args:
        model: the model.
        paragraphs: the paragraphs.
        kinds: per-head activations (``q``, ``k``, ``v``, ``z``).
        batch_size: paragraphs per backward pass.
        progress: show a progress bar.
        loss_tokens: the loss is the NLL of the first ``loss_tokens`` continuation tokens only
            (the paper's Fig. 6 top panel: 1, the code's ``I_range=[49, 50]``); None: all of them.
        loss_position: the loss is the NLL of this one continuation token (0 = the first; the
            paper's Fig. 6 top is ``loss_position=0``, the same as ``loss_tokens=1``).
        mlp_kinds: also the MLP activations ``pre`` / ``post`` (max over d_mlp; the code's
            Fig. 10 columns beside q, k, v, z).

    Returns:
        An :class:`ActivationGradientResult` (nats per unit activation, per token).
    """
    if loss_tokens is not None and loss_position is not None:
        raise InputError("give loss_tokens= (the first k continuation tokens) or loss_position= (one token), not both")
    if loss_position is not None and not 0 <= loss_position < paragraphs.continuation_len:
        raise InputError(f"loss_position must be between 0 and {paragraphs.continuation_len - 1}, got {loss_position}")
    if loss_tokens is not None and not 1 <= loss_tokens <= paragraphs.continuation_len:
        raise InputError(f"loss_tokens must be between 1 and the continuation length {paragraphs.continuation_len}, "
                         f"got {loss_tokens}")
    names, mlp_names = activation_hook_names(model, kinds, mlp_kinds)
    if len(paragraphs) == 0:
        raise InputError("activation_gradients got an empty ParagraphSet")
    paragraphs.validate(model.vocab_size, model.n_ctx)
    P = paragraphs.prefix_len
    out, mlp_out = [], []
    for s in tqdm(range(0, len(paragraphs), batch_size), desc="activation gradients", disable=not progress, leave=False):
        chunk = paragraphs.tokens[s : s + batch_size].to(model.device)

        def loss_fn(logits: Tensor, chunk: Tensor = chunk) -> Tensor:
            start = P if loss_position is None else P + loss_position
            end = chunk.shape[1] if loss_tokens is None else P + loss_tokens
            if loss_position is not None:
                end = start + 1
            return _summed_continuation_nll(logits[:, start - 1 : end - 1], chunk[:, start:end])

        _, _, grads = model.capture(chunk[:, :-1], names + mlp_names, loss_fn=loss_fn)
        per = torch.stack([
            torch.stack([per_query_head(grads[f"blocks.{L}.attn.hook_{k}"].abs().amax(dim=-1), model.n_heads, 2).transpose(1, 2)
                         for k in kinds], dim=1)
            for L in range(model.n_layers)
        ], dim=1)  # [batch, layer, kind, head, pos]
        out.append(per.cpu())
        if mlp_kinds:
            mlp_out.append(torch.stack([torch.stack([grads[f"blocks.{L}.mlp.hook_{k}"].abs().amax(dim=-1) for k in mlp_kinds],
                                                    dim=1) for L in range(model.n_layers)], dim=1).float().cpu())
    return ActivationGradientResult(values=torch.cat(out), kinds=tuple(kinds), tokens=paragraphs.tokens,
                                    ids=list(paragraphs.ids), prefix_len=P,
                                    mlp_values=torch.cat(mlp_out) if mlp_kinds else None, mlp_kinds=tuple(mlp_kinds),
                                    provenance=Provenance.capture(model, kinds=list(kinds), loss_tokens=loss_tokens,
                                                                  loss_position=loss_position,
                                                                  mlp_kinds=list(mlp_kinds)))


def activation_hook_names(model: "HookedModel", kinds: Sequence[str], mlp_kinds: Sequence[str]) -> tuple[list[str], list[str]]:
    """The hook names of per-head activations ``kinds`` and MLP activations ``mlp_kinds`` in every
    layer; an unknown kind gets an :class:`InputError` listing the choices."""
    for k in kinds:
        if k not in ACTIVATION_KINDS:
            raise InputError(f"unknown activation kind {k!r}; choose from {ACTIVATION_KINDS}")
    for k in mlp_kinds:
        if k not in MLP_ACTIVATION_KINDS:
            raise InputError(f"unknown MLP activation {k!r}; choose from {MLP_ACTIVATION_KINDS}")
    return ([f"blocks.{L}.attn.hook_{k}" for L in range(model.n_layers) for k in kinds],
            [f"blocks.{L}.mlp.hook_{k}" for L in range(model.n_layers) for k in mlp_kinds])


def per_query_head(x: Tensor, n_heads: int, dim: int) -> Tensor:
    """Expand a per-key/value-head axis to one entry per query head (grouped-query attention:
    query head ``h`` reads kv head ``h // (n_heads // n_kv_heads)``); a no-op without grouping."""
    if x.shape[dim] == n_heads:
        return x
    return x.repeat_interleave(n_heads // x.shape[dim], dim=dim)


def _summed_continuation_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """Sum over paragraphs of each paragraph's mean continuation NLL."""
    return F.cross_entropy(logits.transpose(1, 2).float(), targets, reduction="none").mean(dim=-1).sum()
