"""The rare-token stage: the paper's Fig. 7 on its own inputs (:func:`memlens.rare_token_attention`
over memorized + non-memorized paragraphs, counts over both)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from memlens.analyses.scan import DEFAULT_BATCH_SIZE
from memlens.core.defaults import RANK_REDUCES, RANK_TIES, one_of
from memlens.run.settings import StageConfig, _runtime
from memlens.run.stage import Stage, register_stage, saved
from memlens.run.stages.common import disabled, splits

if TYPE_CHECKING:
    from memlens.run.context import RunContext
    from memlens.run.folder import RunFolder
    from memlens.viz.html import ReportBuilder


@dataclass(frozen=True, kw_only=True)
class RareAttentionConfig(StageConfig):
    """Settings of the rare-token stage (the paper's Fig. 7 setup; the head stage's own
    rare-token evidence uses its memorized paragraphs and the model's corpus counts).

    Attributes:
        enabled: run the stage (the paper preset does).
        paragraphs: the first this many of memorized + non-memorized paragraphs (the paper's 1,000).
        ranks: ``ordinal`` or ``dense`` (the paper's) rarity ranks.
        reduce: ``mean`` or ``sum`` (the paper's) of attention per rank over paragraphs.
        batch_size: paragraphs per forward pass (runtime).
    """

    stage: ClassVar[str] = "rare_attention"
    enabled: bool = False
    paragraphs: int = 1000
    ranks: str = "ordinal"
    reduce: str = "mean"
    batch_size: int = _runtime(DEFAULT_BATCH_SIZE)

    def validate(self) -> None:
        self._require("enabled", isinstance(self.enabled, bool), "must be true or false")
        self._positive_int("paragraphs", "batch_size")
        self._require("ranks", self.ranks in RANK_TIES, f"must be {one_of(RANK_TIES)}")
        self._require("reduce", self.reduce in RANK_REDUCES, f"must be {one_of(RANK_REDUCES)}")


def rare_attention_stage(ctx: "RunContext") -> dict[str, Any]:
    """The paper's Fig. 7 on its own inputs -> ``rare_attention.safetensors``: the head with the
    most negative rank tau, its tau, entropy and token-level taus by count set."""
    from memlens.analyses.frequency import UnigramCounts
    from memlens.analyses.rare_attention import RareAttentionResult, paper_rare_token_setup, rare_token_attention

    cfg = ctx.config.rare_attention
    if not cfg.enabled:
        raise disabled("rare_attention")
    mem, non = splits(ctx)
    paragraphs, counts = paper_rare_token_setup(mem, non, ctx.model.vocab_size, n=cfg.paragraphs)
    result = saved(ctx, ctx.folder.file("rare_attention"), RareAttentionResult, lambda: rare_token_attention(
        ctx.model, paragraphs, counts, batch_size=cfg.batch_size, progress=ctx.progress, ranks=cfg.ranks,
        reduce=cfg.reduce))
    layer, head = result.rarest_head()
    by_set = {"full": counts, "memorized": UnigramCounts.from_paragraphs(mem, ctx.model.vocab_size),
              "non_memorized": UnigramCounts.from_paragraphs(non, ctx.model.vocab_size)}
    taus = result.token_tau_by_counts(paragraphs, by_set).set_index(["layer", "head"]).loc[(layer, head)]
    return {"layer": layer, "head": head, "n_paragraphs": len(paragraphs),
            "kendall_tau": round(float(result.rank_tau[layer, head]), 4),
            "entropy": round(float(result.entropy[layer, head]), 4),
            "lowest_entropy_head": list(divmod(int(result.entropy.argmin()), result.entropy.shape[1])),
            "token_tau": {k.removeprefix("tau_"): round(float(v), 4) for k, v in taus.items()}}


def rare_attention_report(rb: "ReportBuilder", parts: list[str], folder: "RunFolder", r: dict[str, Any]) -> None:
    import html

    from memlens.analyses.rare_attention import RareAttentionResult

    taus = ", ".join(f"{k} {v:.2f}" for k, v in r["token_tau"].items())
    parts.append(f"<p>The paper's Fig. 7 setup ({r['n_paragraphs']} memorized + non-memorized paragraphs, counts "
                 f"over both): L{r['layer']}H{r['head']} has the most negative rank tau, {r['kendall_tau']:.2f} "
                 f"(the paper: -0.97 for L1H2), attention entropy {r['entropy']:.2f} nats; token-level tau by count "
                 f"set: {html.escape(taus)}.</p>")
    rare = folder.load("rare_attention", RareAttentionResult, "rare_attention")
    parts.append(rb.figure(rare.plot(r["layer"], r["head"]), "The paper's Fig. 7 curve: attention per prefix-token "
                                                             f"rarity rank ({rare.ranks} ranks, {rare.reduce} over "
                                                             "paragraphs)."))


ROW = register_stage(Stage(
    "rare_attention", rare_attention_stage,
    "attention to rare prefix tokens per head, the paper's Fig. 7 setup -> rare_attention.safetensors",
    config=RareAttentionConfig, files={"rare_attention": "rare_attention.safetensors"},
    title="Rare-token attention (the paper's Fig. 7)", report=rare_attention_report, needs=("scan",)))
