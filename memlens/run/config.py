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

from memlens.core.defaults import MAX_SEED, WEIGHTS_FORMS, one_of
from memlens.core.errors import InputError
from memlens.run.presets import PAPER_SETTINGS, PRESETS  # noqa: F401 (PAPER_SETTINGS re-exported)
from memlens.run.settings import StageConfig, _runtime, check_type  # noqa: F401 (re-exported)
from memlens.run.stage_configs import (  # noqa: F401 (re-exported: memlens.run.config is where they were)
    GradientsConfig, HeadsConfig, PerturbConfig, ScanConfig, UnlearnConfig,
)

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

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "settings") -> "RunConfig":
        """Build from a dict: its tables are the sections (the stages' settings, built-in or
        added), its other keys the top-level settings."""
        if not isinstance(data, dict):
            raise InputError(f"{source}: the settings must be a table, got {type(data).__name__}")
        sections = {name: _SECTIONS[name].from_dict(value, source) for name, value in data.items() if name in _SECTIONS}
        plain = cls._plain_kwargs({k: v for k, v in data.items() if k not in sections}, source,
                                  exclude=("extra", *_BUILT_IN), also_known=tuple(_SECTIONS))
        extra = {k: v for k, v in sections.items() if k not in _BUILT_IN}
        built_in = {k: v for k, v in sections.items() if k in _BUILT_IN}
        return cls(**plain, **built_in, **({"extra": extra} if extra else {}))

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
