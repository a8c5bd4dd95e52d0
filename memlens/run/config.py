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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memlens.core.defaults import PRECISIONS, SEED_REQUIREMENT, WEIGHTS_FORMS, one_of, seed_problem
from memlens.core.errors import InputError
from memlens.run.presets import PRESETS
from memlens.run.settings import StageConfig, _runtime

#: the stages that compute in fp32 under ``precision = "bf16-mixed"`` unless the settings say
#: otherwise: those whose bf16-mixed results did not agree with fp32's within their own seed spread
#: (benchmarks/precision_agreement.py; docs/precision.md)
FP32_STAGES: tuple[str, ...] = ()

#: stage name -> its settings class, in the order the Stage table registered them
_SETTINGS: dict[str, type[StageConfig]] = {}


def register_settings(stage: str, config: type[StageConfig]) -> None:
    """Make ``config`` the settings of stage ``stage`` in :class:`RunConfig` (a Stage row calls
    this); a name already taken by another class is refused."""
    if _SETTINGS.get(stage, config) is not config:
        raise InputError(f"the settings of stage {stage!r} are already {_SETTINGS[stage].__name__}")
    check_stage_name(stage, config)
    _SETTINGS[stage] = config


def check_stage_name(stage: str, config: type[StageConfig]) -> None:
    """Refuse a settings class whose ``stage`` is not its stage's name."""
    if config.stage != stage:
        raise InputError(f"{config.__name__}.stage is {config.stage!r}, not the stage's name {stage!r}")


def unregister_settings(stage: str) -> None:
    """Remove a removed stage's settings."""
    _SETTINGS.pop(stage, None)


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
        precision: how the stages compute: ``fp32`` (default, exact) or ``bf16-mixed`` (bfloat16
            matmuls under autocast on float32 weights; docs/precision.md), except the stages of
            ``fp32_stages``.
        fp32_stages: stages that compute in fp32 even when ``precision`` is ``bf16-mixed`` (by
            default those whose bf16-mixed results did not agree with fp32's within their own seed
            spread: docs/precision.md).
        device: where the model runs (``cpu``, ``cuda``; runtime).
        stages: each stage's settings by stage name (a stage left out has its defaults). Read
            them as ``config.unlearn`` or :meth:`stage_settings`.
    """

    model: str = "organism"
    preset: str = ""
    paragraphs: str | None = None
    skip_short: bool = False
    seed: int = 0
    dtype: str = "float32"
    precision: str = "fp32"
    fp32_stages: tuple[str, ...] = FP32_STAGES
    weights: str = "raw"
    device: str = _runtime("cpu")
    stages: dict[str, StageConfig] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "settings") -> "RunConfig":
        """Build from a dict: its tables are the stages' settings, its other keys the top-level
        settings."""
        if not isinstance(data, dict):
            raise InputError(f"{source}: the settings must be a table, got {type(data).__name__}")
        stages = {name: _SETTINGS[name].from_dict(value, source) for name, value in data.items() if name in _SETTINGS}
        plain = cls._plain_kwargs({k: v for k, v in data.items() if k not in stages}, source,
                                  exclude=("stages",), also_known=tuple(_SETTINGS))
        return cls(**plain, stages=stages)

    def stage_precision(self, name: str) -> str:
        """The precision stage ``name`` computes at: ``fp32`` for a stage of ``fp32_stages``, else
        :attr:`precision`."""
        return "fp32" if name in self.fp32_stages else self.precision

    def stage_settings(self, name: str) -> StageConfig:
        """The settings of stage ``name`` (its defaults unless set)."""
        if name not in _SETTINGS:
            raise InputError(f"no settings for stage {name!r}; stages with settings: {', '.join(_SETTINGS)}")
        return self.stages.get(name) or _SETTINGS[name]()

    def __getattr__(self, name: str) -> Any:
        if name in _SETTINGS:
            return self.stage_settings(name)
        raise AttributeError(f"'RunConfig' object has no attribute {name!r}")

    def to_dict(self, include_runtime: bool = True) -> dict[str, Any]:
        """The settings as a JSON-able dict: top-level values, then one dict per stage (every
        registered stage's)."""
        out = super().to_dict(include_runtime)
        out.pop("stages")
        for name in _SETTINGS:
            out[name] = self.stage_settings(name).to_dict(include_runtime)
        return out

    def validate(self) -> None:
        self._require("model", isinstance(self.model, str) and bool(self.model), "must be a non-empty string")
        self._require("preset", self.preset == "" or self.preset in PRESETS, f"must be empty or {one_of(tuple(PRESETS))}")
        self._require("seed", seed_problem(self.seed) is None, SEED_REQUIREMENT)
        self._require("paragraphs", self.paragraphs is None or isinstance(self.paragraphs, str), "must be a path")
        self._require("dtype", self.dtype in ("float32", "bfloat16", "float16"), "must be float32, bfloat16 or float16")
        self._require("precision", self.precision in PRECISIONS, f"must be {one_of(PRECISIONS)}")
        self._require("fp32_stages", isinstance(self.fp32_stages, tuple) and all(s in _SETTINGS for s in self.fp32_stages)
                      and len(set(self.fp32_stages)) == len(self.fp32_stages),
                      f"must name stages with settings, each once ({', '.join(_SETTINGS)})")
        self._require("weights", self.weights in WEIGHTS_FORMS, f"must be {one_of(WEIGHTS_FORMS)}")
        self._require("device", isinstance(self.device, str) and bool(self.device), "must be a device name")
        unknown = sorted(set(self.stages) - set(_SETTINGS))
        self._require("stages", not unknown, f"has settings of no stage: {unknown}")
        for name, value in self.stages.items():
            self._require("stages", isinstance(value, _SETTINGS[name]),
                          f"[{name}] must be a {_SETTINGS[name].__name__}, got {type(value).__name__}")
        # only the stages whose settings differ from their defaults are kept: equal settings, equal configs
        object.__setattr__(self, "stages", {k: v for k, v in self.stages.items() if v != _SETTINGS[k]()})

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
            if isinstance(data, dict) and data.get("preset"):
                # the preset applies as from --preset: its settings, then the file's on top
                if not isinstance(data["preset"], str) or data["preset"] not in PRESETS:
                    raise InputError(f"setting preset = {data['preset']!r}: must be empty or {one_of(tuple(PRESETS))}")
                base = cls.from_preset(data["preset"], data.get("model", "organism") if isinstance(data.get("model"), str)
                                       else "organism")
                return base.override(_flatten(data), source=str(path))
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

    def override(self, values: dict[str, Any], source: str = "settings") -> "RunConfig":
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
        return RunConfig.from_dict(d, source=source)

    def preset_overrides(self) -> list[str]:
        """``key: preset value -> this value`` for every result-affecting setting that differs from
        the preset these settings started from (empty without a preset, or when nothing was changed)."""
        if not self.preset:
            return []
        base = RunConfig.from_preset(self.preset, self.model)
        return [d for d in base.differences(self) if not d.startswith(("model:", "paragraphs:", "seed:"))]

    def differences(self, other: "RunConfig") -> list[str]:
        """``key: this -> other`` for every result-affecting setting that differs."""
        a, b = _flatten(self.to_dict(include_runtime=False)), _flatten(other.to_dict(include_runtime=False))
        return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


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
