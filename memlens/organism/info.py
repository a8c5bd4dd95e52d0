"""Ground truth of an organism: what was planted, how often, and what was never seen."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from memlens.core.data import ParagraphSet


@dataclass
class OrganismInfo:
    """The organism's ground truth, stored with the model.

    Attributes:
        planted: paragraphs planted at chosen duplication counts (``planted.copies``).
        background: paragraphs seen exactly once in training.
        held_out: paragraphs from the same corpus never seen in training.
        unigram_counts: ``[vocab]`` token counts over the training stream.
        seed, corpus_hash, config: what determines the organism.
        stats: build measurements (seconds, final loss, ...).
    """

    planted: ParagraphSet
    background: ParagraphSet
    held_out: ParagraphSet
    unigram_counts: Int[Tensor, " vocab"]
    seed: int
    corpus_hash: str
    config: dict[str, Any]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def copies(self) -> Int[Tensor, " n_planted"]:
        """Duplication count of each planted paragraph, aligned with :attr:`planted`."""
        return self.planted.copies

    def paragraph_set(self, n_background: int = 128, n_held_out: int = 64) -> ParagraphSet:
        """Planted paragraphs, then the first ``n_background`` background and ``n_held_out``
        held-out paragraphs (metadata: ``copies``, ``group``)."""
        return ParagraphSet.concat(
            [self.planted, self.background[:n_background], self.held_out[:n_held_out]]
        )

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.planted.save(folder / "planted.jsonl")
        self.background.save(folder / "background.jsonl")
        self.held_out.save(folder / "held_out.jsonl")
        torch.save(self.unigram_counts, folder / "unigram_counts.pt")
        meta = {"seed": self.seed, "corpus_hash": self.corpus_hash, "config": self.config, "stats": self.stats}
        (folder / "organism.json").write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> "OrganismInfo":
        meta = json.loads((folder / "organism.json").read_text())
        return cls(
            planted=ParagraphSet.load(folder / "planted.jsonl"),
            background=ParagraphSet.load(folder / "background.jsonl"),
            held_out=ParagraphSet.load(folder / "held_out.jsonl"),
            unigram_counts=torch.load(folder / "unigram_counts.pt"),
            seed=meta["seed"],
            corpus_hash=meta["corpus_hash"],
            config=meta["config"],
            stats=meta.get("stats", {}),
        )

    def evaluate(self, scan_result: Any) -> dict[str, Any]:
        """A scan of :meth:`paragraph_set` against this ground truth: memorization rate per
        duplication level, the rank correlation of EM with copies, and the EM of seen-once and
        unseen text (share with EM >= 30, mean EM and NLL)."""
        from memlens.core.stats import spearman

        df = scan_result.to_dataframe()
        if "group" not in df or "copies" not in df:
            return {}
        planted = df[df["group"] == "planted"]
        per_level = {
            int(c): {"n": int(len(g)), "memorized": int((g["split"] == "memorized").sum()),
                     "mean_em": round(float(g["em"].mean()), 2)}
            for c, g in planted.groupby("copies")
        }
        out: dict[str, Any] = {"planted_by_copies": per_level,
                               "spearman_em_vs_copies": round(spearman(planted["copies"].tolist(), planted["em"].tolist()), 3)}
        for group in ("background", "held_out"):
            g = df[df["group"] == group]
            out[group] = {"n": int(len(g)), "frac_em_ge_30": round(float((g["em"] >= 30).mean()), 4),
                          "mean_em": round(float(g["em"].mean()), 3), "mean_nll": round(float(g["nll"].mean()), 4)}
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "size": self.config.get("size"),
            "seed": self.seed,
            "corpus_hash": self.corpus_hash[:16],
            "planted": len(self.planted),
            "copies_levels": sorted(set(self.copies.tolist())),
            "background": len(self.background),
            "held_out": len(self.held_out),
            **self.stats,
        }
