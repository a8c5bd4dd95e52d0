"""What a sparse fine-tuning run computes before its steps that no mask or setting changes, kept
for the next run: the original model's greedy continuation of every paragraph
(:class:`GreedyReferences`) and a trial's scores before, reference logits and objective maps
(:class:`TrialCache`). Both are valid only while the model holds its original weights; the
:class:`memlens.SparseFineTuner` that owns them checks that before every use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Int
from torch import Tensor

from memlens.core.data import ParagraphSet
from memlens.core.metrics import greedy_decode, teacher_forced_scores

if TYPE_CHECKING:
    from memlens.core.model import HookedModel

#: rows per batch when decoding the retain paragraphs' greedy references
DECODE_BATCH = 64
#: a tuner keeps recent trials' inputs (reference logits above all) up to this many bytes
TRIAL_CACHE_BYTES = 2 * 1024**3


class GreedyReferences:
    """The original model's greedy continuation of each paragraph, by (id, prefix length, tokens).

    A paragraph whose true continuation the model reproduces under teacher forcing (EM = its
    length: every memorized paragraph) is its own greedy continuation and is not decoded; the
    others are decoded together, :data:`DECODE_BATCH` rows per batch.
    """

    def __init__(self, model: "HookedModel", batch_size: int) -> None:
        self.model = model
        self.batch_size = batch_size
        self._continuations: dict[tuple, Int[Tensor, " continuation"]] = {}

    def prepare(self, *sets: ParagraphSet) -> None:
        """Compute the continuation of every paragraph of ``sets`` not yet known, in one pass
        (the model must hold its original weights)."""
        rows: dict[tuple, Tensor] = {}
        for ps in sets:
            sets[0].check_compatible(ps, "the paragraph sets of a fine-tuning run")
            for pid, row in zip(ps.ids, ps.tokens):
                key = _row_key(pid, ps.prefix_len, row, self.model.precision)
                if key not in self._continuations:
                    rows.setdefault(key, row)
        if not rows:
            return
        P = sets[0].prefix_len
        tokens = torch.stack(list(rows.values()))
        C = tokens.shape[1] - P
        em = teacher_forced_scores(self.model, tokens, P, max(self.batch_size, DECODE_BATCH)).em
        conts = tokens[:, P:].clone()
        todo = (em < C).nonzero().flatten()
        if len(todo):
            conts[todo] = greedy_decode(self.model, tokens[todo, :P], C, batch_size=DECODE_BATCH)
        for key, cont in zip(rows, conts):
            self._continuations[key] = cont

    def of(self, paragraphs: ParagraphSet) -> ParagraphSet:
        """``paragraphs`` with the original model's greedy continuation in place of their own."""
        self.prepare(paragraphs)
        P = paragraphs.prefix_len
        cont = torch.stack([self._continuations[_row_key(pid, P, row, self.model.precision)]
                            for pid, row in zip(paragraphs.ids, paragraphs.tokens)])
        return ParagraphSet(torch.cat([paragraphs.prefixes, cont], 1), P, paragraphs.continuation_len, paragraphs.ids)

    def not_recited(self, paragraphs: ParagraphSet) -> list[str]:
        """Ids of the paragraphs whose greedy continuation differs from their true one (EM of the
        true continuation under teacher forcing < its length): the ones not memorized."""
        refs = self.of(paragraphs)
        differs = (refs.continuations != paragraphs.continuations).any(-1)
        return [pid for pid, d in zip(paragraphs.ids, differs.tolist()) if d]


class TrialCache:
    """Recent trials' inputs by key; the oldest are dropped beyond ``max_bytes`` of reference
    logits (the last one is always kept)."""

    def __init__(self, max_bytes: int = TRIAL_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._trials: dict[tuple, dict[str, Any]] = {}

    def get(self, key: tuple) -> dict[str, Any] | None:
        return self._trials.get(key)

    def put(self, key: tuple, trial: dict[str, Any]) -> None:
        self._trials[key] = trial
        while len(self._trials) > 1 and self.nbytes() > self.max_bytes:
            del self._trials[next(iter(self._trials))]

    def clear(self) -> None:
        self._trials.clear()

    def nbytes(self) -> int:
        """Bytes held in reference logits."""
        return sum(t["ref_logits"].nelement() * t["ref_logits"].element_size() for t in self._trials.values())

    def __len__(self) -> int:
        return len(self._trials)


def trial_key(objective: str, *sets: ParagraphSet, precision: str = "fp32") -> tuple:
    """The cache key of a trial: the model's compute precision, its objective and the ids and
    tokens of its sets."""
    return precision, objective, *((tuple(s.ids), s.tokens.numpy().tobytes()) for s in sets)


def _row_key(pid: str, prefix_len: int, row: Tensor, precision: str) -> tuple:
    return precision, pid, prefix_len, row.numpy().tobytes()
