"""Localization against planted truth: which MLP neurons (or weights) hold a set of paragraphs?

Each method is one :class:`Localizer` class with one verb, ``run(paragraphs, contrast=None) ->
NeuronScores``, registered under a name (:func:`register_localizer`); the benchmark
(:class:`LocalizationBenchmark`) plants paragraphs through known neurons (INJ) and scores every
registered localizer against them, and drops what each one found (DEL). A new localizer is one
class plus one registration line::

    class MyLocalizer(Localizer):
        name = "mine"

        def scores(self, paragraphs, contrast, progress):
            return neuron_scores, None, 0          # [layer, neuron], per-weight scores or None, steps

    register_localizer("mine", MyLocalizer)
"""

from memlens.analyses.localization.attribution import (ActivationLocalizer, GradientLocalizer,
                                                       IntegratedGradientsLocalizer, RandomLocalizer, ZeroOutLocalizer)
from memlens.analyses.localization.benchmark import LocalizationBenchmark
from memlens.analyses.localization.benchmark_result import LocalizationBenchmarkResult
from memlens.analyses.localization.base import (Localizer, NeuronScores, check_localizer_names, localizer_names,
                                                make_localizer, register_localizer, window_gain)
from memlens.analyses.localization.masks import HardConcreteLocalizer, SlimmingLocalizer

# the built-in localizers, in the order tables list them
register_localizer("gradient", GradientLocalizer)
register_localizer("gradient_contrastive", GradientLocalizer, objective="contrastive")
register_localizer("activation", ActivationLocalizer)
register_localizer("zero_out", ZeroOutLocalizer)
register_localizer("zero_out_screened", ZeroOutLocalizer, screen=0.2, screen_multiple=4)
register_localizer("integrated_gradients", IntegratedGradientsLocalizer)
register_localizer("slimming", SlimmingLocalizer)
register_localizer("hard_concrete", HardConcreteLocalizer)
register_localizer("random", RandomLocalizer)

__all__ = ["ActivationLocalizer", "GradientLocalizer", "HardConcreteLocalizer", "IntegratedGradientsLocalizer",
           "LocalizationBenchmark", "LocalizationBenchmarkResult",
           "Localizer", "NeuronScores", "RandomLocalizer", "SlimmingLocalizer", "ZeroOutLocalizer",
           "check_localizer_names", "localizer_names", "make_localizer", "register_localizer", "window_gain"]
