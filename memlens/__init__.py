"""memlens: where does a language model keep the paragraphs it recites?

A library reproduction of Stoehr et al., "Localizing Paragraph Memorization in Language Models"
(2024), on TransformerLens. Everything a script needs is importable from here::

    import memlens as ml
    model = ml.HookedModel.organism()
    scan = ml.scan(model, model.ground_truth.paragraph_set())
    gmap = ml.GradientMap(model).compute(scan.memorized(), label="memorized")
"""

from memlens.core import stats  # noqa: F401  (rank statistics: spearman, kendall_tau)
from memlens.core.components import ComponentKey, ComponentRegistry
from memlens.core.data import Paragraph, ParagraphSet
from memlens.core.errors import CacheError, HookError, InputError, MemlensError, ModelLoadError
from memlens.core.ground_truth import GroundTruth
from memlens.core.metrics import ContinuationScores, greedy_decode, paragraph_min_k_nll, teacher_forced_scores
from memlens.core.model import HookedModel
from memlens.core.neurons import NeuronLayout
from memlens.core.results import Provenance, Result, load_result
from memlens.core.sparse import WeightMask
from memlens.core.quantize import QuantScheme, quantize_dequantize
from memlens.core.paper_data import FilterReport, paper_filters, read_carlini_arrays, read_token_tensor
from memlens.loading.processed import process_weights
from memlens.loading import load_model, register_model_source

from memlens import organism as _organism  # noqa: F401  (registers the embedded models with load_model)
from memlens.organism import OrganismInfo
from memlens.organism.smollm2 import smollm2_gguf_path

from memlens import viz  # noqa: F401

from memlens.analyses.activation_gradients import ActivationGradientResult, activation_gradients
from memlens.analyses.attention_views import activation_gradient_view, head_attention_views, head_views
from memlens.analyses.frequency import UnigramCounts
from memlens.analyses.duplication import DuplicationResult, duplication_profile
from memlens.analyses.gradient_similarity import GradientSimilarity, GradientSimilarityResult
from memlens.analyses.gradients import GradientMap, GradientMapComparison, GradientMapResult
from memlens.analyses.head_ablation import HeadAblation, HeadAblationResult, head_ablation_em_drop
from memlens.analyses.heads import HeadLocalizer, HeadReport
from memlens.analyses.injection import InjectionResult, InjectionSettings, inject, inject_neurons, inject_weights
from memlens.analyses.localization import (ActivationLocalizer, GradientLocalizer, HardConcreteLocalizer,
                                           IntegratedGradientsLocalizer, LocalizationBenchmark,
                                           LocalizationBenchmarkResult, Localizer, NeuronScores, RandomLocalizer,
                                           SlimmingLocalizer, ZeroOutLocalizer, localizer_names, make_localizer,
                                           register_localizer, window_gain)
from memlens.analyses.mask_comparison import MaskComparison, compare_masks
from memlens.analyses.mask_tradeoff import MaskTradeoff, mask_tradeoff
from memlens.analyses.noise import NoiseIntervention, NoiseResult
from memlens.analyses.pair_gradients import PairGradientResult, pair_activation_gradients
from memlens.analyses.patching import PatchingResult, PatchPair, attribution_patching, exact_patching, make_patch_pairs
from memlens.analyses.perturb import PerturbationComparison, PerturbationResult, PrefixPerturber
from memlens.analyses.profiles import EMRangeProfiles, profiles_by_em_range
from memlens.analyses.rare_attention import RareAttentionResult, paper_rare_token_setup, rare_token_attention
from memlens.analyses.resurfacing import ResurfacingAudit, ResurfacingResult, ResurfacingSettings
from memlens.analyses.scan import ScanResult, scan
from memlens.analyses.sparse_mask import SparseMask
from memlens.analyses.base import Analysis
from memlens.analyses.finetune import FineTuneResult, FineTuneSettings
from memlens.analyses.mask_drawing import selective_mask
from memlens.analyses.unlearn import SparseFineTuner

from memlens.scale.ray_scan import scan_with_ray
from memlens.scale.scan_table import ScanTable, merge_scan_tables
from memlens.scale.stream import Shard, scan_to_table

from memlens.run.config import RunConfig
from memlens.run.settings import StageConfig
from memlens.run.stages.gradients import GradientsConfig
from memlens.run.stages.head_ablation import HeadAblationConfig
from memlens.run.stages.heads import HeadsConfig
from memlens.run.stages.localize import LocalizeConfig
from memlens.run.stages.noise import NoiseConfig
from memlens.run.stages.pair_gradients import PairGradientsConfig
from memlens.run.stages.perturb import PerturbConfig
from memlens.run.stages.rare_attention import RareAttentionConfig
from memlens.run.stages.resurface import ResurfaceConfig
from memlens.run.stages.scan import ScanConfig
from memlens.run.stages.tradeoff import TradeoffConfig
from memlens.run.stages.unlearn import UnlearnConfig
from memlens.run.folder import RunFolder
from memlens.run.stage import Stage, StageSkipped, register_stage, stages, unregister_stage
from memlens.run.pipeline import run_pipeline
from memlens.run.report import write_report

__version__ = "0.1.0"

__all__ = [
    "ActivationGradientResult",
    "ActivationLocalizer",
    "Analysis",
    "CacheError",
    "ComponentKey",
    "ComponentRegistry",
    "ContinuationScores",
    "DuplicationResult",
    "EMRangeProfiles",
    "FilterReport",
    "FineTuneResult",
    "FineTuneSettings",
    "GradientLocalizer",
    "GradientMap",
    "GradientMapComparison",
    "GradientMapResult",
    "GradientSimilarity",
    "GradientSimilarityResult",
    "GradientsConfig",
    "GroundTruth",
    "HardConcreteLocalizer",
    "HeadAblation",
    "HeadAblationConfig",
    "HeadAblationResult",
    "HeadLocalizer",
    "HeadReport",
    "HeadsConfig",
    "HookError",
    "HookedModel",
    "InjectionResult",
    "InjectionSettings",
    "InputError",
    "IntegratedGradientsLocalizer",
    "LocalizationBenchmark",
    "LocalizationBenchmarkResult",
    "LocalizeConfig",
    "Localizer",
    "MaskComparison",
    "MaskTradeoff",
    "MemlensError",
    "ModelLoadError",
    "NeuronLayout",
    "NeuronScores",
    "NoiseConfig",
    "NoiseIntervention",
    "NoiseResult",
    "OrganismInfo",
    "PairGradientResult",
    "PairGradientsConfig",
    "Paragraph",
    "ParagraphSet",
    "PatchPair",
    "PatchingResult",
    "PerturbConfig",
    "PerturbationComparison",
    "PerturbationResult",
    "PrefixPerturber",
    "Provenance",
    "RandomLocalizer",
    "RareAttentionConfig",
    "QuantScheme",
    "RareAttentionResult",
    "Result",
    "ResurfaceConfig",
    "ResurfacingAudit",
    "ResurfacingResult",
    "ResurfacingSettings",
    "RunConfig",
    "RunFolder",
    "ScanConfig",
    "ScanResult",
    "ScanTable",
    "Shard",
    "SlimmingLocalizer",
    "SparseFineTuner",
    "SparseMask",
    "Stage",
    "StageConfig",
    "StageSkipped",
    "TradeoffConfig",
    "UnigramCounts",
    "UnlearnConfig",
    "WeightMask",
    "ZeroOutLocalizer",
    "activation_gradient_view",
    "activation_gradients",
    "attribution_patching",
    "compare_masks",
    "duplication_profile",
    "exact_patching",
    "greedy_decode",
    "head_ablation_em_drop",
    "head_attention_views",
    "head_views",
    "inject",
    "inject_neurons",
    "inject_weights",
    "load_model",
    "load_result",
    "localizer_names",
    "make_localizer",
    "make_patch_pairs",
    "mask_tradeoff",
    "merge_scan_tables",
    "pair_activation_gradients",
    "paper_filters",
    "paper_rare_token_setup",
    "paragraph_min_k_nll",
    "process_weights",
    "profiles_by_em_range",
    "quantize_dequantize",
    "rare_token_attention",
    "read_carlini_arrays",
    "read_token_tensor",
    "register_localizer",
    "register_model_source",
    "register_stage",
    "run_pipeline",
    "scan",
    "scan_to_table",
    "scan_with_ray",
    "selective_mask",
    "smollm2_gguf_path",
    "stages",
    "teacher_forced_scores",
    "unregister_stage",
    "window_gain",
    "write_report",
]
