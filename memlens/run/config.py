"""Settings of the study, one dataclass per analysis, nested in :class:`RunConfig`.

``memlens run`` writes the RunConfig into ``run.json``; a resumed run whose settings differ is
refused with the differing keys named. A RunConfig comes from defaults, a TOML file
(``memlens run --config study.toml``), a dict, and dotted overrides (``"unlearn.steps": 20``)::

    model = "organism"
    seed = 0

    [unlearn]
    steps = 20
    lr = 0.002

Fields marked *runtime* (batch sizes) change speed and memory, not results: they may differ
between the parts of a resumed run.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from memlens.core.defaults import AGGREGATIONS, FRACTION, KL_DIRECTIONS, KL_REDUCTIONS, MASK_KINDS, N_SAMPLES, \
    MIN_K, NOISE_REFERENCES, PATCH_POSITIONS, NOISE_SCALES, NON_MEMORIZED_MAX_EM, PATCH_KINDS, RANDOM_MASK_DRAWS, RANK_REDUCES, RANK_TIES, \
    RARE_SETUPS, RETAIN_DESIGNS, \
    STRATEGIES, WEIGHTS_FORMS, WORST_TIES, MAX_SEED, one_of
from memlens.core.errors import InputError
from memlens.run.presets import PAPER_SETTINGS, PRESETS  # noqa: F401 (PAPER_SETTINGS re-exported)

_RUNTIME = {"runtime": True}


def _runtime(default: Any) -> Any:
    return field(default=default, metadata=_RUNTIME)


class StageConfig:
    """Base of every settings class: validation and dict round trips. A stage's settings are a
    frozen, keyword-only dataclass deriving from it, with a ``section`` name (its TOML table)."""

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise an :class:`~memlens.core.errors.InputError` naming the first bad setting."""

    def _require(self, name: str, ok: bool, what: str) -> None:
        if not ok:
            section = self.section if isinstance(self.section, str) else ""  # RunConfig's is a method
            where = f"{section}.{name}" if section else name
            raise InputError(f"setting {where} = {getattr(self, name)!r}: {what}")

    def _positive_int(self, *names: str) -> None:
        for n in names:
            v = getattr(self, n)
            self._require(n, isinstance(v, int) and not isinstance(v, bool) and v >= 1, "must be an integer >= 1")

    def _positive_float(self, *names: str) -> None:
        for n in names:
            v = getattr(self, n)
            self._require(n, isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
                          "must be a finite number > 0")

    def to_dict(self, include_runtime: bool = True) -> dict[str, Any]:
        """The settings as a JSON-able dict (tuples as lists); without the runtime fields when
        ``include_runtime`` is False."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, StageConfig):
                out[f.name] = v.to_dict(include_runtime)
            elif include_runtime or not f.metadata.get("runtime"):
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "settings") -> Any:
        """Build from a dict; unknown keys are refused with the known ones listed."""
        if not isinstance(data, dict):
            raise InputError(f"{source}: [{cls.section}] must be a table of settings, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        extra = {}
        if cls is RunConfig:
            fields.pop("extra")
            extra = {name: _SECTIONS[name].from_dict(data[name], source) for name in data
                     if name in _SECTIONS and name not in fields}
            data = {k: v for k, v in data.items() if k not in extra}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            where = f"[{cls.section}] " if cls.section else ""
            raise InputError(f"{source}: unknown setting(s) {where}{', '.join(unknown)}; known: {', '.join(fields)}")
        kwargs = {}
        for name, value in data.items():
            sub = _SECTIONS.get(name) if cls is RunConfig else None
            if sub is None:
                _check_type(cls, name, value, fields[name].type, source)
            if sub is not None:
                value = sub.from_dict(value, source)
            elif isinstance(value, list):
                value = tuple(value)
            elif isinstance(fields[name].default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            kwargs[name] = value
        return cls(**kwargs, **({"extra": extra} if extra else {}))


@dataclass(frozen=True, kw_only=True)
class ScanConfig(StageConfig):
    """Settings of :func:`memlens.scan`.

    Attributes:
        batch_size: paragraphs per forward pass (runtime).
        non_memorized_max_em: EM at or below which a paragraph is non-memorized (paper: 10).
        memorized_min_em: EM at or above which it is memorized (default: the whole continuation).
        min_k: the share of continuation tokens (those with the highest NLL) in the min-K% NLL
            column of every scan.
    """

    section: ClassVar[str] = "scan"
    batch_size: int = _runtime(16)
    non_memorized_max_em: int = NON_MEMORIZED_MAX_EM
    memorized_min_em: int | None = None
    min_k: float = MIN_K

    def scan_kwargs(self) -> dict[str, Any]:
        """The settings every scan engine (:func:`memlens.scan`, ``scan_to_table``, the Ray
        engine) takes: batch size, split thresholds, min-K share."""
        return dict(batch_size=self.batch_size, non_memorized_max_em=self.non_memorized_max_em,
                    memorized_min_em=self.memorized_min_em, min_k=self.min_k)

    def validate(self) -> None:
        self._positive_int("batch_size")
        self._require("non_memorized_max_em", isinstance(self.non_memorized_max_em, int) and self.non_memorized_max_em >= 0,
                      "must be an integer >= 0")
        self._require("min_k", isinstance(self.min_k, (int, float)) and not isinstance(self.min_k, bool)
                      and 0 < self.min_k <= 1, "must be a share in (0, 1]")
        if self.memorized_min_em is not None:
            self._require("memorized_min_em", isinstance(self.memorized_min_em, int)
                          and self.memorized_min_em > self.non_memorized_max_em,
                          "must be an integer above non_memorized_max_em")


@dataclass(frozen=True, kw_only=True)
class GradientsConfig(StageConfig):
    """Settings of the gradient stage (:class:`memlens.GradientMap`).

    Attributes:
        max_paragraphs: memorized and non-memorized paragraphs mapped (at most, each).
        aggregation: component score: ``max`` (the paper's), ``l1``, ``l2`` or ``mean``.
        max_per_em_bin: paragraphs per EM range in the profiles by EM (the paper's Fig. 9).
        similarity: also map the cosine similarity of memorized vs non-memorized gradients per
            component (:class:`memlens.GradientSimilarity`, the code's cosine notebook).
        batch_size: paragraphs per backward pass (runtime).
    """

    section: ClassVar[str] = "gradients"
    max_paragraphs: int = 32
    aggregation: str = "max"
    max_per_em_bin: int = 32
    similarity: bool = True
    batch_size: int = _runtime(8)

    def validate(self) -> None:
        self._positive_int("max_paragraphs", "max_per_em_bin", "batch_size")
        self._require("aggregation", self.aggregation in AGGREGATIONS, f"must be {one_of(AGGREGATIONS)}")


@dataclass(frozen=True, kw_only=True)
class PerturbConfig(StageConfig):
    """Settings of the perturbation stage (:class:`memlens.PrefixPerturber`).

    Attributes:
        max_paragraphs: memorized and non-memorized paragraphs swept (at most, each).
        n_samples: replacements per prefix position.
        strategy: ``random``, ``second_best``, ``similar`` or ``cumulative``.
        skip_position_0: never perturb prefix position 0 (the official code's).
        allow_original: random replacements may draw the original token (the code's).
        worst_ties: which equally damaging perturbation is a paragraph's worst: ``nll`` (the
            higher NLL) or ``earliest`` (the earliest position, the code's).
        batch_size: perturbed paragraphs per forward pass (runtime).
    """

    section: ClassVar[str] = "perturb"
    max_paragraphs: int = 16
    n_samples: int = N_SAMPLES
    strategy: str = "random"
    skip_position_0: bool = False
    allow_original: bool = False
    worst_ties: str = "nll"
    batch_size: int = _runtime(64)

    def validate(self) -> None:
        self._positive_int("max_paragraphs", "n_samples", "batch_size")
        self._require("strategy", self.strategy in STRATEGIES, f"must be {one_of(STRATEGIES)}")
        self._require("worst_ties", self.worst_ties in WORST_TIES, f"must be {one_of(WORST_TIES)}")
        for name in ("skip_position_0", "allow_original"):
            self._require(name, isinstance(getattr(self, name), bool), "must be true or false")


@dataclass(frozen=True, kw_only=True)
class HeadsConfig(StageConfig):
    """Settings of the head stage (:class:`memlens.HeadLocalizer`).

    Attributes:
        max_paragraphs: memorized paragraphs analysed (at most).
        causal_share: weight of activation patching in the combined rank, relative to the
            other evidence kinds together (0.5: as much as all of them).
        patch_kinds: activations patched per head (``z``, ``q``, ``k``, ``v``).
        ablation: also measure each head's zero-ablation EM drop (causal ground truth).
        exact_top: 0: patch every head exactly; n: screen every head with attribution patching
            and patch exactly (and ablate) only the n it ranks highest (models with many heads).
        rare_setup: the rare-token evidence's paragraphs: ``memorized`` (the analysed memorized
            paragraphs, counts from the model's corpus where known) or ``paper`` (also the paper's
            Fig. 7 on its own: the first ``rare_paragraphs`` of memorized + non-memorized, counts
            over both -> ``rare_attention.safetensors``).
        rare_paragraphs: paragraphs of the ``paper`` setup (the paper's 1,000).
        rare_ranks: ``ordinal`` or ``dense`` (the paper's) rarity ranks of the ``paper`` setup.
        rare_reduce: ``mean`` or ``sum`` (the paper's) of attention per rank over paragraphs.
        patch_positions: ``all`` positions of a head are patched, or only the ``perturbed`` one(s)
            (the paper's Appendix A.3).
        pair_gradients: also the activation gradients of each memorized paragraph and its
            perturbed version at the perturbed and the first changed token (the paper's Fig. 10).
        view_paragraphs: memorized paragraphs in the top head's attention views (the paper's
            Fig. 6 bottom / Fig. 12); 0: none.
        batch_size: paragraphs per pass (runtime).
    """

    section: ClassVar[str] = "heads"
    max_paragraphs: int = 16
    causal_share: float = 0.5
    patch_kinds: tuple[str, ...] = PATCH_KINDS
    ablation: bool = True
    exact_top: int = 0
    rare_setup: str = "memorized"
    rare_paragraphs: int = 1000
    rare_ranks: str = "ordinal"
    rare_reduce: str = "mean"
    view_paragraphs: int = 8
    patch_positions: str = "all"
    pair_gradients: bool = True
    batch_size: int = _runtime(8)

    def validate(self) -> None:
        self._positive_int("max_paragraphs", "batch_size", "rare_paragraphs")
        self._require("view_paragraphs", isinstance(self.view_paragraphs, int) and not isinstance(self.view_paragraphs, bool)
                      and self.view_paragraphs >= 0, "must be an integer >= 0")
        for name, options in (("rare_setup", RARE_SETUPS), ("rare_ranks", RANK_TIES), ("rare_reduce", RANK_REDUCES),
                              ("patch_positions", PATCH_POSITIONS)):
            self._require(name, getattr(self, name) in options, f"must be {one_of(options)}")
        self._require("exact_top", isinstance(self.exact_top, int) and self.exact_top >= 0, "must be an integer >= 0")
        self._require("causal_share", isinstance(self.causal_share, (int, float)) and 0 <= self.causal_share < 1,
                      "must be in [0, 1)")
        self._require("patch_kinds", bool(self.patch_kinds) and set(self.patch_kinds) <= set(PATCH_KINDS),
                      f"must be a non-empty list of {one_of(PATCH_KINDS)}")


@dataclass(frozen=True, kw_only=True)
class UnlearnConfig(StageConfig):
    """Settings of the unlearning stage (:class:`memlens.SparseFineTuner`, :func:`memlens.compare_masks`).

    Attributes:
        n_targets: trials per mask: each fine-tunes one memorized paragraph from the original
            weights (restored in between); targets repeat when fewer are memorized (paper: 20).
        retain_paragraphs: non-memorized paragraphs in each trial's KL retain set (paper: 10).
        retain_design: ``fixed`` = the same retain set in every trial; ``fresh`` = a fresh batch
            per trial drawn from every non-memorized paragraph of the scan (the code's design).
        fraction: share of the trainable weights a sparse mask selects (paper: 0.001).
        masks: masks compared: ``all``, ``topk``, ``selective``, ``random``.
        steps, lr: Adam steps and learning rate of unlearning (code: 5 at 1e-5; the paper's text: 10).
        weight_decay: Adam's coupled L2 decay, on the masked weights only (code: 1.0).
        kl_weight: weight of the retain KL term.
        nll_scale: weight of the target's NLL term (code: 0.1).
        kl_direction: ``model||original`` (the paper's formula) or ``original||model`` (the code's).
        kl_reduction: ``mean`` over positions or ``batchmean`` (summed over positions; the code's).
        random_mask: ``exact`` (the top-k count) or ``bernoulli`` (the code's draw).
        selectivity_floor: quantile of the retain sensitivity added before division (selective).
        tradeoff_lrs: learning rates of the trade-off curves (target vs retain EM per mask); empty:
            none drawn.
        edit: also edit each target to its perturbed continuation (needs the perturb stage).
        edit_masks: masks compared for editing.
        edit_steps, edit_lr: Adam steps and learning rate of editing.
        noise_scales: the noise intervention's scales (factors of each parameter's std); empty:
            no noise intervention (the code's grid: ``PAPER_NOISE_SCALES``).
        noise_masks: masks noised (``topk``, ``selective``, ``random``; same size).
        noise_draws: noise draws per scale.
        noise_reference: ``greedy`` (the model's own continuation) or ``true`` (the code's).
    """

    section: ClassVar[str] = "unlearn"
    n_targets: int = 4
    retain_paragraphs: int = 16
    retain_design: str = "fixed"
    fraction: float = FRACTION
    masks: tuple[str, ...] = MASK_KINDS
    steps: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.0
    kl_weight: float = 1.0
    nll_scale: float = 1.0
    kl_direction: str = "model||original"
    kl_reduction: str = "mean"
    random_mask: str = "exact"
    selectivity_floor: float = 0.1
    tradeoff_lrs: tuple[float, ...] = ()
    edit: bool = True
    edit_masks: tuple[str, ...] = ("all", "topk", "random")
    edit_steps: int = 30
    edit_lr: float = 1e-2
    noise_scales: tuple[float, ...] = NOISE_SCALES
    noise_masks: tuple[str, ...] = ("topk", "selective", "random")
    noise_draws: int = 3
    noise_reference: str = "greedy"

    def validate(self) -> None:
        self._positive_int("n_targets", "retain_paragraphs", "steps", "edit_steps")
        self._positive_float("lr", "edit_lr", "fraction")
        self._require("fraction", self.fraction <= 1, "must be in (0, 1]")
        for name in ("kl_weight", "nll_scale", "weight_decay"):
            v = getattr(self, name)
            self._require(name, isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0,
                          "must be a finite number >= 0")
        self._require("selectivity_floor", isinstance(self.selectivity_floor, (int, float)) and 0 < self.selectivity_floor <= 1,
                      "must be in (0, 1]")
        for name, options in (("retain_design", RETAIN_DESIGNS), ("kl_direction", KL_DIRECTIONS),
                              ("kl_reduction", KL_REDUCTIONS), ("random_mask", RANDOM_MASK_DRAWS)):
            self._require(name, getattr(self, name) in options, f"must be {one_of(options)}")
        self._require("tradeoff_lrs", all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                                          and x > 0 for x in self.tradeoff_lrs), "must be a list of numbers > 0")
        for name in ("masks", "edit_masks"):
            self._require(name, bool(getattr(self, name)) and set(getattr(self, name)) <= set(MASK_KINDS),
                          f"must be a non-empty list of {one_of(MASK_KINDS)}")
        self._require("noise_scales", all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                                          and x >= 0 for x in self.noise_scales), "must be a list of numbers >= 0")
        sparse = tuple(k for k in MASK_KINDS if k != "all")
        self._require("noise_masks", bool(self.noise_masks) and set(self.noise_masks) <= set(sparse),
                      f"must be a non-empty list of {one_of(sparse)}")
        self._positive_int("noise_draws")
        self._require("noise_reference", self.noise_reference in NOISE_REFERENCES, f"must be {one_of(NOISE_REFERENCES)}")

    def retain_set(self, non_memorized: Any) -> Any:
        """The ``retain`` argument of :func:`memlens.compare_masks` for these settings: every
        non-memorized paragraph (the pool fresh batches are drawn from) or the first
        ``retain_paragraphs`` (``fixed``)."""
        return non_memorized if self.retain_design == "fresh" else non_memorized[: self.retain_paragraphs]

    def compare_kwargs(self, seed: int = 0) -> dict[str, Any]:
        """The settings of :func:`memlens.compare_masks` (and :func:`memlens.mask_tradeoff`) these
        stand for, other than the steps and learning rate (unlearning's or editing's); the unlearn
        stage and benchmarks/paper_fig5.py both use it, with :meth:`retain_set`."""
        return dict(fraction=self.fraction, kl_weight=self.kl_weight, selectivity_floor=self.selectivity_floor,
                    n_trials=self.n_targets, retain_per_trial=self.retain_paragraphs if self.retain_design == "fresh" else None,
                    seed=seed, nll_scale=self.nll_scale, kl_direction=self.kl_direction,
                    kl_reduction=self.kl_reduction, weight_decay=self.weight_decay, random_mask=self.random_mask)


#: section name -> settings class: the built-in stages' and every one a Stage row registers
_SECTIONS: dict[str, type[StageConfig]] = {c.section: c for c in (ScanConfig, GradientsConfig, PerturbConfig, HeadsConfig,
                                                                  UnlearnConfig)}


_BUILT_IN = tuple(_SECTIONS)


def register_section(name: str, config: type[StageConfig]) -> None:
    """Make ``config`` the settings section ``name`` of :class:`RunConfig` (a Stage row calls
    this); a section name already taken by another class is refused."""
    if _SECTIONS.get(name, config) is not config:
        raise InputError(f"settings section {name!r} is already {_SECTIONS[name].__name__}")
    check_section_name(name, config)
    _SECTIONS[name] = config


def check_section_name(name: str, config: type[StageConfig]) -> None:
    """Refuse a settings class whose ``section`` is not its stage's name."""
    if config.section != name:
        raise InputError(f"{config.__name__}.section is {config.section!r}, not the stage's name {name!r}")


def unregister_section(name: str) -> None:
    """Remove an added stage's settings section (the built-in ones stay)."""
    if name in _BUILT_IN:
        raise InputError(f"settings section {name!r} is built in and cannot be removed")
    _SECTIONS.pop(name, None)


@dataclass(frozen=True, kw_only=True)
class RunConfig(StageConfig):
    """Everything that determines a ``memlens run``.

    Attributes:
        model: what :func:`memlens.load_model` loads: ``organism``, ``organism-tiny``, a hub name,
            a local folder or a ``.gguf`` file.
        paragraphs: a JSONL/CSV paragraph file (default: the model's ground-truth set).
        skip_short: leave out paragraphs shorter than prefix + continuation (counted in the
            scan summary) instead of refusing the file.
        seed: the organism's seed and the seed of every random choice.
        weights: ``raw`` (HuggingFace weights, the default) or ``processed`` (TransformerLens's
            default processing, as the paper's code: LayerNorm folded, writing weights centred);
            gradient maps, masks and fine-tuning then live in those coordinates.
        preset: the preset these settings started from (``paper``), or empty.
        dtype: ``float32`` (default), ``bfloat16`` or ``float16`` (on a GPU); the scan then checks
            teacher-forced EM against greedy decoding on a sample (near-ties at low precision).
        device: where the model runs (``cpu``, ``cuda``; runtime).
        scan, gradients, perturb, heads, unlearn: the stages' settings.
        extra: the settings of stages added to the Stage table (section -> settings); a
            section left out has its defaults. Read them with :meth:`section`.
    """

    model: str = "organism"
    preset: str = ""
    paragraphs: str | None = None
    skip_short: bool = False
    seed: int = 0
    dtype: str = "float32"
    weights: str = "raw"
    device: str = _runtime("cpu")
    scan: ScanConfig = field(default_factory=ScanConfig)
    gradients: GradientsConfig = field(default_factory=GradientsConfig)
    perturb: PerturbConfig = field(default_factory=PerturbConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig)
    extra: dict[str, StageConfig] = field(default_factory=dict)

    def section(self, name: str) -> StageConfig:
        """The settings of stage ``name``: a built-in section, or an added stage's (its
        defaults unless set)."""
        if name in _BUILT_IN:
            return getattr(self, name)
        if name not in _SECTIONS:
            raise InputError(f"no settings section {name!r}; sections: {', '.join(_SECTIONS)}")
        return self.extra.get(name) or _SECTIONS[name]()

    def __getattr__(self, name: str) -> Any:
        if name in _SECTIONS and name not in _BUILT_IN:
            return self.section(name)
        raise AttributeError(f"'RunConfig' object has no attribute {name!r}")

    def to_dict(self, include_runtime: bool = True) -> dict[str, Any]:
        """The settings as a JSON-able dict: top-level values, then one dict per section
        (every registered stage's, added ones included)."""
        out = super().to_dict(include_runtime)
        out.pop("extra")
        for name in _SECTIONS:
            if name not in out:
                out[name] = self.section(name).to_dict(include_runtime)
        return out

    def validate(self) -> None:
        self._require("model", isinstance(self.model, str) and bool(self.model), "must be a non-empty string")
        self._require("preset", self.preset == "" or self.preset in PRESETS, f"must be empty or {one_of(tuple(PRESETS))}")
        self._require("seed", isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed <= MAX_SEED,
                      "must be an integer from 0 to 2**63 - 1")
        self._require("paragraphs", self.paragraphs is None or isinstance(self.paragraphs, str), "must be a path")
        self._require("dtype", self.dtype in ("float32", "bfloat16", "float16"), "must be float32, bfloat16 or float16")
        self._require("weights", self.weights in WEIGHTS_FORMS, f"must be {one_of(WEIGHTS_FORMS)}")
        self._require("device", isinstance(self.device, str) and bool(self.device), "must be a device name")

    @classmethod
    def paper(cls, model: str = "organism") -> "RunConfig":
        """The paper's method: every setting the paper or its official code fixes at their value
        (:data:`PAPER_SETTINGS`; docs/paper-fidelity.md, row by row), the others as
        :meth:`recommended` for ``model``. ``preset`` records ``"paper"``."""
        return cls.from_preset("paper", model)

    @classmethod
    def from_preset(cls, name: str, model: str = "organism") -> "RunConfig":
        """The settings of preset ``name`` (see :data:`PRESETS`) on top of :meth:`recommended`."""
        if name not in PRESETS:
            raise InputError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
        return cls.recommended(model).override(PRESETS[name] | {"preset": name})

    @classmethod
    def recommended(cls, model: str = "organism") -> "RunConfig":
        """The defaults, with the settings the model recommends when it is a registered one (the
        SmolLM2 organism: fewer paragraphs per stage and an attribution screen before exact
        patching, so that every stage fits in minutes on a CPU)."""
        from memlens.loading import recommended_settings

        return cls(model=model).override(recommended_settings(model))

    @classmethod
    def from_toml(cls, path: str | Path) -> "RunConfig":
        """Read a TOML file of settings (top-level ``model``, ``paragraphs``, ``seed``; one table
        per stage). Unknown keys and bad values are refused with the file named."""
        from memlens.core.compat import tomllib

        path = Path(path)
        if not path.is_file():
            raise InputError(f"--config {path}: no such file")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: not valid TOML ({e})") from None
        try:
            return cls.from_dict(data, source=str(path))
        except InputError as e:
            msg = str(e)
            raise InputError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None

    def to_toml(self) -> str:
        """The settings as TOML text (what :meth:`from_toml` reads)."""
        d = self.to_dict()
        lines = [f"{k} = {_toml_value(v)}" for k, v in d.items() if not isinstance(v, dict) and v is not None]
        for section, values in d.items():
            if isinstance(values, dict):
                lines += ["", f"[{section}]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
        return "\n".join(lines) + "\n"

    def override(self, values: dict[str, Any]) -> "RunConfig":
        """A copy with dotted settings replaced (``{"unlearn.steps": 20, "seed": 1}``); ``None``
        values are ignored (a flag that was not given)."""
        d = self.to_dict()
        for key, value in values.items():
            if value is None:
                continue
            *section, name = key.split(".")
            target = d
            for s in section:
                if s not in target or not isinstance(target[s], dict):
                    raise InputError(f"unknown setting section {s!r} in {key!r}")
                target = target[s]
            if name not in target:
                raise InputError(f"unknown setting {key!r}")
            target[name] = value
        return RunConfig.from_dict(d, source="settings")

    def differences(self, other: "RunConfig") -> list[str]:
        """``key: this -> other`` for every result-affecting setting that differs."""
        a, b = _flatten(self.to_dict(include_runtime=False)), _flatten(other.to_dict(include_runtime=False))
        return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


_TYPE_NAMES = {"bool": "true or false (a TOML boolean, without quotes)", "int": "an integer", "float": "a number",
               "str": "a string (in quotes)"}


def _matches(value: Any, type_name: str) -> bool:
    if type_name == "bool":
        return isinstance(value, bool)
    if type_name == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_name == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str)


def _check_type(cls: type, name: str, value: Any, annotation: Any, source: str) -> None:
    """Refuse a setting whose value is not exactly of its field's type (``"false"`` for a
    boolean, ``true`` for an integer, a nested list for a list of names): an :class:`InputError`
    naming the setting and the type it needs. Annotations other than ``bool``, ``int``,
    ``float``, ``str`` (optionally ``| None``) and ``tuple[<one of those>, ...]`` are not checked."""
    ann = str(annotation).replace(" ", "")
    optional = ann.endswith("|None")
    base = ann.removesuffix("|None")
    if value is None and optional:
        return
    section = getattr(cls, "section", "")
    where = f"[{section}] {name}" if isinstance(section, str) and section else name
    if base.startswith("tuple[") and base.endswith(",...]") and base[6:-5] in _TYPE_NAMES:
        elem = base[6:-5]
        if not isinstance(value, (list, tuple)) or not all(_matches(v, elem) for v in value):
            raise InputError(f"{source}: setting {where} = {value!r}: must be a list of "
                             f"{_TYPE_NAMES[elem].split(' (')[0].removeprefix('a ').removeprefix('an ')}s")
        return
    if base in _TYPE_NAMES and not _matches(value, base):
        raise InputError(f"{source}: setting {where} = {value!r}: must be {_TYPE_NAMES[base]}"
                         + (" or left out" if optional else ""))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise InputError(f"cannot write {v!r} as TOML")
