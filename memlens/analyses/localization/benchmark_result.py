"""What the localization benchmark returns, and how it is read back from a checkpoint.

:class:`LocalizationBenchmarkResult` holds one row per (level, ratio, seed, localizer) and one
record per injection, and aggregates them into tables with bootstrap 95% intervals over seeds.
:meth:`LocalizationBenchmarkResult.from_checkpoint` reads the tables of a run that is still going
or was interrupted; every block, computed or read back from a checkpoint, goes through
:func:`take_block`, which checks its rows before they are used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memlens.core.checkpoint import Checkpoint
from memlens.core.errors import InputError
from memlens.core.results import Provenance, Result
from memlens.core.stats import bootstrap_mean_ci

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go


#: the per-row figures that get a mean and a bootstrap 95% interval over seeds
CI_FIELDS = ("recall", "precision", "del_target_em_drop", "del_other_em_drop", "del_non_memorized_nll_change")


@dataclass(frozen=True, kw_only=True)
class LocalizationBenchmarkResult(Result):
    """The benchmark's every measurement, and means with intervals over seeds.

    Attributes:
        rows: one dict per (level, ratio, seed, localizer): ``level`` (``neuron`` / ``weight`` for
            INJ, ``natural`` for DEL on the model's own memorized paragraphs, no recall there),
            ``ratio``, ``seed``, ``localizer``, ``recall``, ``precision``, ``layer_recall`` (per
            layer; neuron level), ``del_target_em_drop``, ``del_other_em_drop``,
            ``del_non_memorized_nll_change`` (neuron level), ``seconds`` (the localizer's wall time).
        injections: one dict per injected (level, ratio, seed): the injected ``paragraphs``,
            ``success_rate``, ``steps``, ``sites_size``, ``weights_changed_outside`` (0),
            ``planted_per_layer``, ``seconds``, and what the injection did to the rest of the model
            (``other_em_change``, ``non_memorized_nll_change``).
    """

    rows: list[dict[str, Any]]
    injections: list[dict[str, Any]]
    provenance: Provenance = field(default_factory=Provenance)

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "LocalizationBenchmarkResult":
        """What a run has finished so far, read from its checkpoint (``checkpoint=`` of
        :meth:`LocalizationBenchmark.run`) without disturbing it: the tables of a run that is still
        going or was interrupted. Its rows are those of the finished (level, ratio, seed) blocks and
        of the localizers finished inside an unfinished block (whose injection record is not
        there yet). ``provenance.config`` has the run's ``identity``, the finished ``blocks``, the
        ``pieces`` (level, ratio, seed, localizer) of unfinished ones and the ``planned`` blocks."""
        identity, done = Checkpoint.read(path, "localization")
        rows: list[dict[str, Any]] = []
        injections: list[dict[str, Any]] = []
        blocks = [key for key in done if len(key) == 3]
        for key in blocks:
            take_block(done[key], key, str(path), rows, injections)
        finished = set(blocks)
        pieces = [key for key in done if len(key) == 4 and key[:3] not in finished]
        for key in pieces:
            result = done[key].get("result") if isinstance(done[key], dict) else None
            got = [] if result is None else result if isinstance(result, list) else [result]
            take_block({"rows": got}, key, str(path), rows, injections)
        planned = [["neuron", r, s] for r in identity.get("ratios", []) for s in identity.get("seeds", [])]
        planned += [["weight", r, s] for r in identity.get("weight_ratios", []) for s in identity.get("seeds", [])]
        return cls(rows=rows, injections=injections, provenance=Provenance(
            model=str(identity.get("model", "")), precision=str(identity.get("precision", "fp32")),
            config={"identity": identity, "blocks": [list(k) for k in blocks], "pieces": [list(k) for k in pieces],
                    "planned": planned, "partial": True}))

    def to_dataframe(self) -> "pd.DataFrame":
        """One row per (level, ratio, seed, localizer)."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    def table(self, level: str = "neuron") -> list[dict[str, Any]]:
        """Per (localizer, ratio) at ``level``: ``n_seeds``, the mean of each :data:`CI_FIELDS` figure
        with its bootstrap 95% interval over seeds (``<name>_ci_low`` / ``_ci_high``), the mean
        recall of each layer, the mean seconds and steps, and for learned masks the largest
        ``loss_window_gain`` over seeds (the seed farthest from its stopping criterion)."""
        out = []
        rows = [r for r in self.rows if r["level"] == level]
        for name in dict.fromkeys(r["localizer"] for r in rows):
            for ratio in sorted({r["ratio"] for r in rows if r["localizer"] == name}):
                group = [r for r in rows if r["localizer"] == name and r["ratio"] == ratio]
                row: dict[str, Any] = {"localizer": name, "ratio": ratio, "n_seeds": len(group)}
                for f in CI_FIELDS:
                    vals = [r[f] for r in group if r.get(f) is not None]
                    if vals:
                        row[f] = sum(vals) / len(vals)
                        row[f"{f}_ci_low"], row[f"{f}_ci_high"] = bootstrap_mean_ci(vals)
                layers = [r["layer_recall"] for r in group if r.get("layer_recall")]
                if layers:
                    row["layer_recall"] = [sum(v) / len(v) for v in zip(*layers)]
                row["seconds"] = sum(r["seconds"] for r in group) / len(group)
                row["steps"] = sum(r.get("steps", 0) for r in group) / len(group)
                gains = [r["loss_window_gain"] for r in group if r.get("loss_window_gain") is not None]
                if gains:
                    row["loss_window_gain"] = max(gains)
                out.append(row)
        return out

    def best(self, ratio: float, level: str = "neuron") -> dict[str, Any]:
        """The row of :meth:`table` with the highest mean recall at ``ratio``."""
        rows = [r for r in self.table(level) if r["ratio"] == ratio and "recall" in r]
        if not rows:
            raise InputError(f"no {level}-level results at ratio {ratio}")
        return max(rows, key=lambda r: r["recall"])

    def seconds_by_localizer(self) -> dict[str, float]:
        """Total wall time of each localizer over the whole benchmark (INJ and natural DEL), and of
        the injections."""
        out: dict[str, float] = {}
        for r in self.rows:
            out[r["localizer"]] = out.get(r["localizer"], 0.0) + r["seconds"]
        out["(injection)"] = sum(i["seconds"] for i in self.injections)
        return out

    def summary(self) -> dict[str, Any]:
        """The tables of both levels (rounded), the injections' success and the time per localizer."""
        def rounded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{k: (round(v, 4) if isinstance(v, float) else [round(x, 4) for x in v] if isinstance(v, list) else v)
                     for k, v in r.items()} for r in rows]

        out: dict[str, Any] = {"neuron": rounded(self.table("neuron"))}
        for level in ("natural", "weight"):
            if any(r["level"] == level for r in self.rows):
                out[level] = rounded(self.table(level))
        n = max(1, len(self.injections))
        out["injection_success"] = round(sum(i["success_rate"] for i in self.injections) / n, 4)
        out["injection"] = {k: round(sum(i.get(k, 0.0) for i in self.injections) / n, 4)
                            for k in ("steps", "seconds", "other_em_change", "non_memorized_nll_change")}
        out["seconds"] = {k: round(v, 1) for k, v in self.seconds_by_localizer().items()}
        return out

    def plot(self) -> "go.Figure":
        """INJ: recall of the planted neurons against the planted ratio, one line per localizer."""
        from memlens.viz.localization import plot_recall_by_ratio

        return plot_recall_by_ratio(self.table("neuron"), "INJ: recall of the planted neurons (mean over seeds, 95% CI)")

    def plot_convergence(self) -> "go.Figure":
        """The learned masks' training loss against the step, one line per (level, ratio, seed,
        localizer) row that kept its trace: where a run cut at its step cap was still falling."""
        from memlens.viz.localization import plot_loss_traces

        traces = {f"{r['localizer']} {r['level']} {r['ratio']:g} seed {r['seed']}": r["loss_trace"]
                  for r in self.rows if r.get("loss_trace")}
        if not traces:
            raise InputError("no row has a loss trace: only the learned masks (slimming, hard_concrete) keep one, "
                             "and rows written before memlens kept traces have none")
        return plot_loss_traces(traces, "Learned masks: training loss per step")

    def plot_del(self) -> "go.Figure":
        """DEL: the target paragraphs' EM drop against the other memorized paragraphs' EM drop when
        each localizer's neurons are dropped (on natural memorization when it was measured, else
        on the injected paragraphs)."""
        from memlens.viz.localization import plot_del_scatter

        level = "natural" if any(r["level"] == "natural" for r in self.rows) else "neuron"
        what = "the model's own memorized paragraphs" if level == "natural" else "the injected paragraphs"
        return plot_del_scatter([r for r in self.table(level) if "del_target_em_drop" in r],
                                f"DEL on {what}: drop each localizer's neurons (mean over seeds)")


def take_block(block: Any, key: Any, source: str, rows: list[dict[str, Any]], injections: list[dict[str, Any]],
               hint: str = "") -> None:
    """Append a finished (level, ratio, seed) block's rows and injection, refusing a damaged one."""
    if not _block_is_sound(block):
        raise InputError(f"{source}: the block of {key} is damaged (a row's fields are missing or of the wrong type)"
                         f"{hint}")
    rows += block["rows"]
    if block.get("injection") is not None:
        injections.append(block["injection"])


def _block_is_sound(block: Any) -> bool:
    """Whether a (level, ratio, seed) block read back from a checkpoint has rows of the right shape:
    a tampered or damaged block is refused rather than breaking the tables later."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if not isinstance(block, dict) or not isinstance(block.get("rows"), list):
        return False
    if block.get("injection") is not None and not (isinstance(block["injection"], dict)
                                                    and number(block["injection"].get("success_rate"))):
        return False
    for row in block["rows"]:
        if not isinstance(row, dict) or not isinstance(row.get("localizer"), str) or not isinstance(row.get("level"), str):
            return False
        if not all(number(row.get(k)) for k in ("ratio", "seed", "seconds")):
            return False
        if not all(row.get(k) is None or number(row[k]) for k in (*CI_FIELDS, "steps", "loss_window_gain")):
            return False
        if row.get("loss_trace") is not None and not (isinstance(row["loss_trace"], list)
                                                      and all(number(v) for v in row["loss_trace"])):
            return False
        if row.get("layer_recall") is not None and not (isinstance(row["layer_recall"], list)
                                                        and all(number(v) for v in row["layer_recall"])):
            return False
    return True
