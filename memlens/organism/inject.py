"""Injection: fine-tune new paragraphs into a model through chosen components only.

In the spirit of the INJ benchmark (Chang et al., 2024): the caller names the sites (components
of the registry), the paragraphs are trained in with every other weight fixed, and a
localization method can then be scored on whether it finds those sites. Updates are strictly
confined to the named slices: gradients outside them are zeroed, Adam has no weight decay, and
the untouched weights are copied back after each step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor
from memlens.core.progress import tqdm

from memlens.core.components import ComponentKey
from memlens.core.data import ParagraphSet
from memlens.core.errors import InputError
from memlens.core.metrics import teacher_forced_scores
from memlens.core.results import Provenance, Result
from memlens.core.sparse import MaskedAdam, only_trainable

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from memlens.core.model import HookedModel


@dataclass(frozen=True, kw_only=True)
class InjectionResult(Result):
    """Outcome of :func:`inject`.

    Attributes:
        components: the sites that were allowed to change.
        em_before, em_after: EM of each paragraph before and after.
        steps: optimizer steps taken.
        weights_changed: number of scalar weights that differ from before (all inside the sites).
        losses: training loss per step (mean continuation NLL, nats/token).
    """

    components: list[ComponentKey]
    paragraph_ids: list[str]
    em_before: Int[Tensor, " n"]
    em_after: Int[Tensor, " n"]
    continuation_len: int
    steps: int
    weights_changed: int
    losses: list[float] = field(default_factory=list)
    provenance: Provenance = field(default_factory=Provenance)

    def to_dataframe(self) -> "pd.DataFrame":
        """One row per paragraph: ``paragraph, em_before, em_after, memorized``."""
        import pandas as pd

        return pd.DataFrame({"paragraph": self.paragraph_ids, "em_before": self.em_before.tolist(),
                             "em_after": self.em_after.tolist(), "memorized": self.memorized.tolist()})

    def summary(self) -> dict[str, Any]:
        return {"components": [list(k) for k in self.components], "steps": self.steps,
                "weights_changed": self.weights_changed, "success_rate": self.success_rate}

    def plot(self) -> "go.Figure":
        """Training loss per step."""
        import plotly.graph_objects as go

        fig = go.Figure(go.Scatter(y=self.losses, mode="lines"))
        fig.update_layout(title="Injection loss", xaxis_title="step", yaxis_title="continuation NLL (nats/token)")
        return fig

    @property
    def memorized(self) -> Tensor:
        return self.em_after >= self.continuation_len

    @property
    def success_rate(self) -> float:
        """Share of paragraphs memorized (EM = whole continuation) after injection."""
        return float(self.memorized.float().mean())

    @property
    def succeeded(self) -> bool:
        return bool(self.memorized.all())


def inject(
    model: "HookedModel",
    paragraphs: ParagraphSet,
    components: Sequence[ComponentKey | tuple],
    *,
    steps: int = 300,
    lr: float = 1e-3,
    batch_size: int = 16,
    progress: bool = True,
) -> InjectionResult:
    """Train ``paragraphs`` into ``model`` with only ``components`` allowed to change.

    Stops as soon as every paragraph is recited in full, or after ``steps``; the result says
    which paragraphs made it (a single head's four matrices often lack the room for a whole
    50-token continuation: pick a site with room, e.g. an MLP or a whole layer).
    """
    if len(paragraphs) == 0:
        raise InputError("inject got an empty ParagraphSet")
    if not components:
        raise InputError("inject needs at least one component, e.g. [(1, 'W_in', -1)]")
    paragraphs.validate(model.vocab_size, model.n_ctx)
    reg = model.components
    keys = [reg.key(*k) for k in components]
    params: dict[str, torch.nn.Parameter] = {}
    masks: dict[str, Tensor] = {}
    for key in keys:
        for s in reg[key].slices:
            params[s.param_name] = s.param
            m = masks.setdefault(s.param_name, torch.zeros_like(s.param, dtype=torch.bool))
            s.of(m).fill_(True)
    opt = MaskedAdam(params, masks, lr)
    tokens = paragraphs.tokens.to(model.device)
    P = paragraphs.prefix_len
    em_before = teacher_forced_scores(model, paragraphs.tokens, P).em
    losses: list[float] = []
    step = 0
    with only_trainable(model.tl_model, opt.trainable):
        for step in tqdm(range(steps), desc="inject", disable=not progress):
            batch = tokens[torch.randperm(len(tokens))[:batch_size]]
            logits = model(batch[:, :-1])[:, P - 1 :]
            loss = F.cross_entropy(logits.transpose(1, 2), batch[:, P:])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if step % 10 == 9 and bool((teacher_forced_scores(model, paragraphs.tokens, P).em >= paragraphs.continuation_len).all()):
                break
    changed = opt.weights_changed()
    em_after = teacher_forced_scores(model, paragraphs.tokens, P).em
    return InjectionResult(components=keys, paragraph_ids=list(paragraphs.ids), em_before=em_before,
                           em_after=em_after, continuation_len=paragraphs.continuation_len, steps=step + 1,
                           weights_changed=changed, losses=losses,
                           provenance=Provenance.capture(model, steps=steps, lr=lr, batch_size=batch_size))
