"""The paper's Fig. 5 table: unlearning or editing each target alone through several masks."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from memlens.core.data import ParagraphSet
from memlens.core.defaults import FRACTION
from memlens.core.errors import InputError
from memlens.core.results import Provenance, Result
from memlens.analyses.unlearn import SELECTIVITY_FLOOR, SparseFineTuner

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from memlens.core.model import HookedModel


@dataclass(frozen=True, kw_only=True)
class MaskComparison(Result):
    """The paper's Fig. 5 table: per objective x mask, the mean over targets of each
    :meth:`FineTuneResult.summary` (each target fine-tuned alone, weights restored in between).

    Attributes:
        rows: one dict per (objective, mask): ``objective, mask, mask_size, weights_changed,
            <set>_em_before, <set>_em_after, <set>_top1_changed`` and, for ``edit``,
            ``target_em_new_after, target_edit_success``.
        targets: the target paragraph ids.
    """

    rows: list[dict[str, Any]]
    targets: list[str]
    provenance: Provenance = field(default_factory=Provenance)

    def to_dataframe(self) -> "pd.DataFrame":
        import pandas as pd

        return pd.DataFrame(self.rows)

    def summary(self) -> dict[str, Any]:
        rows = [{k: (None if isinstance(v, float) and v != v else round(v, 3) if isinstance(v, float) else v)
                 for k, v in r.items()} for r in self.rows]
        return {"targets": list(self.targets), "table": rows}

    def row(self, objective: str, mask: str) -> dict[str, Any]:
        """The row of one objective and mask."""
        for r in self.rows:
            if r["objective"] == objective and r["mask"] == mask:
                return r
        raise InputError(f"no row for objective {objective!r} and mask {mask!r}")

    def plot(self) -> "go.Figure":
        """Mean EM after fine-tuning per objective/mask, for targets, other memorized and retain."""
        import plotly.graph_objects as go

        fig = go.Figure()
        for key, label in (("target_em_after", "target"), ("other_memorized_em_after", "other memorized"),
                           ("retain_em_after", "retain")):
            if self.rows and key in self.rows[0]:
                fig.add_trace(go.Bar(x=[f"{r['objective']}/{r['mask']}" for r in self.rows],
                                     y=[r[key] for r in self.rows], name=label))
        fig.update_layout(barmode="group", title="EM after sparse fine-tuning", yaxis_title="mean EM (tokens)")
        return fig


def compare_masks(
    model: "HookedModel", targets: ParagraphSet, retain: ParagraphSet, other_memorized: ParagraphSet | None = None,
    objectives: Sequence[str] = ("unlearn",), masks: Sequence[str] = ("all", "topk", "random"),
    perturbed: ParagraphSet | None = None, fraction: float = FRACTION, steps: int = 10,
    lr: dict[str, float] | float = 1e-3, kl_weight: float = 1.0, progress: bool = True,
    selectivity_floor: float = SELECTIVITY_FLOOR, checkpoint: str | Path | None = None,
) -> MaskComparison:
    """The paper's Fig. 5 table: for each objective x mask, the mean EM after fine-tuning each
    target alone (restored in between) on the target, the other memorized paragraphs and the
    retain set, and the weights changed.

    Args:
        model: the model (its weights are restored after every run).
        targets: memorized paragraphs to unlearn or edit, one at a time.
        retain: non-memorized paragraphs kept close to the original model (KL).
        other_memorized: memorized paragraphs that should stay recited (the target is left out).
        objectives: ``unlearn`` and/or ``edit``; ``edit`` needs ``perturbed`` (aligned with targets).
        masks: ``all``, ``topk``, ``selective`` (see :func:`selective_mask`), ``random``.
        perturbed: each target's perturbed paragraph (``PrefixPerturber.perturbed_paragraphs``).
        fraction: share of the trainable weights a sparse mask selects.
        steps, lr: Adam steps and learning rate (``lr`` may map mask -> rate).
        kl_weight: weight of the retain KL term.
        progress: show a progress bar.
        selectivity_floor: see :func:`selective_mask`.
        checkpoint: a JSON-lines file each finished run is appended to; a later call with the
            same file skips the runs already there (an interrupted comparison resumes).

    Returns:
        A :class:`MaskComparison`.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    ft = SparseFineTuner(model)
    jobs = [(o, m, i) for o in objectives for m in masks for i in range(len(targets))]
    done = _read_runs(Path(checkpoint)) if checkpoint is not None else {}
    rows = [done[(o, m, targets.ids[i])] for o, m, i in jobs if (o, m, targets.ids[i]) in done]
    todo = [(o, m, i) for o, m, i in jobs if (o, m, targets.ids[i]) not in done]
    for objective, mask, i in tqdm(todo, desc="fine-tuning runs", disable=not progress, initial=len(rows),
                                   total=len(jobs)):
        rate = lr[mask] if isinstance(lr, dict) else lr
        others = None
        if other_memorized is not None:
            others = other_memorized.filter([pid != targets.ids[i] for pid in other_memorized.ids])
        with ft.restored(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if objective == "unlearn":
                r = ft.unlearn(targets[[i]], retain, mask, fraction, steps, rate, kl_weight, other_memorized=others,
                               selectivity_floor=selectivity_floor)
            elif objective == "edit":
                if perturbed is None:
                    raise InputError("the edit objective needs perturbed= (e.g. PrefixPerturber.perturbed_paragraphs)")
                r = ft.edit(targets[[i]], retain, perturbed_paragraph=perturbed[[i]], mask=mask, fraction=fraction,
                            steps=steps, lr=rate, kl_weight=kl_weight, other_memorized=others,
                            selectivity_floor=selectivity_floor)
            else:
                raise InputError(f"unknown objective {objective!r}; use 'unlearn' or 'edit'")
        rows.append(r.summary() | {"target": targets.ids[i]})
        if checkpoint is not None:
            with Path(checkpoint).open("a", encoding="utf-8") as f:
                f.write(json.dumps(rows[-1]) + "\n")
    order = {(o, m): k for k, (o, m, _) in enumerate(jobs)}
    rows.sort(key=lambda r: order[(r["objective"], r["mask"])])
    df = pd.DataFrame(rows)
    table = df.groupby(["objective", "mask"], sort=False).mean(numeric_only=True).reset_index()
    return MaskComparison(rows=table.to_dict(orient="records"), targets=list(targets.ids),
                          provenance=Provenance.capture(model, objectives=list(objectives), masks=list(masks),
                                                        fraction=fraction, steps=steps, lr=lr, kl_weight=kl_weight,
                                                        selectivity_floor=selectivity_floor))


def _read_runs(path: Path) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Finished runs of an interrupted :func:`compare_masks`, by (objective, mask, target); a torn
    last line is dropped."""
    if not path.exists():
        return {}
    runs = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            runs[(row["objective"], row["mask"], row["target"])] = row
        except (ValueError, RecursionError, TypeError, KeyError):
            continue  # a torn or damaged line: that run is done again
    return runs
