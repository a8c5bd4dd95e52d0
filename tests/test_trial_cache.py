"""The fine-tuning trial cache keeps recent trials within its byte budget, the last one always."""

import torch

from memlens.analyses.trial_cache import TrialCache, trial_key
from memlens.core.data import ParagraphSet


def _trial(n_floats: int) -> dict:
    return {"ref_logits": torch.zeros(n_floats)}


def test_the_oldest_trials_go_first_beyond_the_budget_and_the_last_stays():
    cache = TrialCache(max_bytes=10 * 4)
    for i in range(3):
        cache.put(("t", i), _trial(4))
    assert len(cache) == 2 and cache.get(("t", 0)) is None and cache.get(("t", 2)) is not None
    cache.put(("big",), _trial(100))  # larger than the budget alone: kept, everything older dropped
    assert len(cache) == 1 and cache.get(("big",)) is not None
    cache.clear()
    assert len(cache) == 0 and cache.nbytes() == 0


def test_trial_keys_tell_sets_apart_by_ids_and_tokens():
    a = ParagraphSet(torch.arange(8).reshape(2, 4), 2, 2, ["a", "b"])
    renamed = ParagraphSet(torch.arange(8).reshape(2, 4), 2, 2, ["a", "c"])
    other_tokens = ParagraphSet(torch.arange(8).reshape(2, 4) + 1, 2, 2, ["a", "b"])
    assert trial_key("unlearn", a) == trial_key("unlearn", ParagraphSet(a.tokens.clone(), 2, 2, ["a", "b"]))
    assert len({trial_key("unlearn", a), trial_key("edit", a), trial_key("unlearn", renamed),
                trial_key("unlearn", other_tokens)}) == 4
