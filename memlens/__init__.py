"""memlens: where does a language model keep the paragraphs it recites?

A library reproduction of Stoehr et al., "Localizing Paragraph Memorization in Language Models"
(2024), on TransformerLens.
"""

from memlens.components import ComponentKey, ComponentRegistry
from memlens.data import Paragraph, ParagraphSet
from memlens.errors import CacheError, HookError, InputError, MemlensError, ModelLoadError
from memlens.metrics import ContinuationScores, greedy_decode, teacher_forced_scores
from memlens.model import HookedModel
from memlens.scan import ScanResult, scan


__version__ = "0.1.0"

__all__ = [
    "CacheError",
    "ComponentKey",
    "ComponentRegistry",
    "ContinuationScores",
    "HookError",
    "HookedModel",
    "InputError",
    "MemlensError",
    "ModelLoadError",
    "Paragraph",
    "ParagraphSet",
    "ScanResult",
    "greedy_decode",
    "scan",
    "teacher_forced_scores",
]
