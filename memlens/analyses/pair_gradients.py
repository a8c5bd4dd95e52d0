"""Activation gradients of a perturbed pair (the paper's Fig. 10, the code's ``perturbed
activation gradients`` notebook): for a memorized paragraph and its perturbed version, the
gradient of the NLL of each run's own token at the first changed continuation position, read at
the perturbed prefix token and at the position that predicts the changed token, per head (q, k,
v, z) and per MLP (pre, post), max-pooled over the hidden dimension and averaged over pairs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from memlens.core.progress import tqdm

from memlens.analyses.activation_gradients import (ACTIVATION_KINDS, MLP_ACTIVATION_KINDS, activation_hook_names,
                                                   per_query_head)
from memlens.analyses.patching import PatchPair, pair_positions
from memlens.core.errors import InputError
from memlens.core.results import Provenance, Result
from memlens.core.precision import with_precision

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from memlens.core.model import HookedModel

#: the two runs of a pair and the two positions read
RUNS = ("clean", "perturbed")
WHERE = ("perturbed_token", "changed_token")


@dataclass(frozen=True, kw_only=True)
class PairGradientResult(Result):
    """Mean |dNLL/dh| over pairs, per run (clean / perturbed) and position (the perturbed prefix
    token / the position predicting the first changed continuation token).

    Attributes:
        heads: ``[run, where, layer, kind, head]`` for :attr:`kinds` (nats per unit activation).
        mlp: ``[run, where, layer, mlp_kind]`` for :attr:`mlp_kinds`.
        pair_ids: the pairs averaged.
    """

    heads: Float[Tensor, "run where layer kind head"] = field(repr=False)
    mlp: Float[Tensor, "run where layer mlp_kind"] = field(repr=False)
    kinds: tuple[str, ...]
    mlp_kinds: tuple[str, ...]
    pair_ids: list[str]
    provenance: Provenance = field(default_factory=Provenance)

    def grid(self, run: str = "clean", where: str = "changed_token", kind: str = "v") -> Float[Tensor, "layer head"]:
        """One run's, position's and kind's values as ``[layer, head]``."""
        if run not in RUNS or where not in WHERE or kind not in self.kinds:
            raise InputError(f"choose run from {RUNS}, where from {WHERE} and kind from {self.kinds}")
        return self.heads[RUNS.index(run), WHERE.index(where), :, self.kinds.index(kind)]

    def to_dataframe(self) -> "pd.DataFrame":
        """One row per (run, where, layer, kind, head); MLP rows have head -1 and kind ``mlp_<k>``."""
        import pandas as pd

        rows = []
        for r, run in enumerate(RUNS):
            for w, where in enumerate(WHERE):
                for L in range(self.heads.shape[2]):
                    for k, kind in enumerate(self.kinds):
                        for h in range(self.heads.shape[4]):
                            rows.append({"run": run, "where": where, "layer": L, "kind": kind, "head": h,
                                         "value": float(self.heads[r, w, L, k, h])})
                    for k, kind in enumerate(self.mlp_kinds):
                        rows.append({"run": run, "where": where, "layer": L, "kind": f"mlp_{kind}", "head": -1,
                                     "value": float(self.mlp[r, w, L, k])})
        return pd.DataFrame(rows)

    def summary(self) -> dict[str, Any]:
        """Per run and position, the head (of any kind) with the largest mean gradient."""
        out: dict[str, Any] = {"n_pairs": len(self.pair_ids)}
        for r, run in enumerate(RUNS):
            for w, where in enumerate(WHERE):
                v = self.heads[r, w]
                L, k, h = (int(i) for i in torch.unravel_index(v.flatten().argmax(), v.shape))
                out[f"{run}@{where}"] = {"layer": L, "kind": self.kinds[k], "head": h, "value": round(float(v.max()), 6)}
        return out

    def plot(self, kind: str = "v") -> "go.Figure":
        """Four layer x head heatmaps of one kind: clean / perturbed run at the perturbed token /
        the changed token (each panel scaled to [0, 1])."""
        from memlens.viz.heads import plot_head_panels

        panels = {f"{run} @ {where}": self.grid(run, where, kind) for run in RUNS for where in WHERE}
        return plot_head_panels(panels, f"|dNLL/d{kind}| of a perturbed pair (Fig. 10), mean over "
                                        f"{len(self.pair_ids)} pairs", cols=2)


@torch.enable_grad()
@with_precision
def pair_activation_gradients(
    model: "HookedModel", pairs: Sequence[PatchPair], kinds: Sequence[str] = ACTIVATION_KINDS,
    mlp_kinds: Sequence[str] = MLP_ACTIVATION_KINDS, progress: bool = True,
) -> PairGradientResult:
    """Fig. 10: for each pair (:func:`memlens.make_patch_pairs`), run the clean and the perturbed
    paragraph (cut before the first changed continuation token), take the NLL of each run's own
    token there, and read |dNLL/dh| (max over the hidden dimension) at the first perturbed prefix
    position and at the last position (the one predicting the changed token).

    Returns:
        A :class:`PairGradientResult`, averaged over pairs (nats per unit activation).
    """
    if not pairs:
        raise InputError("pair_activation_gradients needs at least one pair (memlens.make_patch_pairs)")
    names, mlp_names = activation_hook_names(model, kinds, mlp_kinds)
    heads = torch.zeros(len(RUNS), len(WHERE), model.n_layers, len(kinds), model.n_heads)
    mlp = torch.zeros(len(RUNS), len(WHERE), model.n_layers, len(mlp_kinds))
    for pair in tqdm(pairs, desc="pair activation gradients", disable=not progress):
        if pair.corrupt_target < 0:
            raise InputError(f"pair {pair.id!r} does not know the perturbed paragraph's own token; build the pairs "
                             "with memlens.make_patch_pairs")
        positions = (pair_positions(pair, "perturbed")[0], pair.length - 1)
        for r, (tokens, target) in enumerate(((pair.clean, pair.target), (pair.corrupt, pair.corrupt_target))):
            def loss_fn(logits: Tensor, target: int = target) -> Tensor:
                return -torch.log_softmax(logits[0, -1].float(), dim=-1)[target]

            _, _, grads = model.capture(tokens[None].to(model.device), names + mlp_names, loss_fn=loss_fn)
            for w, p in enumerate(positions):
                for L in range(model.n_layers):
                    for k, kind in enumerate(kinds):
                        g = grads[f"blocks.{L}.attn.hook_{kind}"][0, p].abs().amax(dim=-1)  # [head or kv head]
                        heads[r, w, L, k] += per_query_head(g, model.n_heads, 0).float().cpu() / len(pairs)
                    for k, kind in enumerate(mlp_kinds):
                        mlp[r, w, L, k] += float(grads[f"blocks.{L}.mlp.hook_{kind}"][0, p].abs().max()) / len(pairs)
    return PairGradientResult(heads=heads, mlp=mlp, kinds=tuple(kinds), mlp_kinds=tuple(mlp_kinds),
                              pair_ids=[p.id for p in pairs],
                              provenance=Provenance.capture(model, kinds=list(kinds), mlp_kinds=list(mlp_kinds)))
