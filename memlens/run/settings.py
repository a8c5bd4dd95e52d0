"""The base of every settings class: validation, dict round trips and exact type checks of the
values a TOML file or a dict gives (:class:`StageConfig`). Each stage's settings class lives in its
stage module (:mod:`memlens.run.stages`), :class:`~memlens.run.config.RunConfig` in :mod:`memlens.run.config`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import field
from typing import Any, ClassVar

from memlens.core.errors import InputError

_RUNTIME = {"runtime": True}


def _runtime(default: Any) -> Any:
    return field(default=default, metadata=_RUNTIME)


class StageConfig:
    """Base of every settings class: validation and dict round trips. A stage's settings are a
    frozen, keyword-only dataclass deriving from it, with the ``stage`` it belongs to (whose name is
    also its TOML table and its key in ``run.json``)."""

    stage: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise an :class:`~memlens.core.errors.InputError` naming the first bad setting."""

    def _require(self, name: str, ok: bool, what: str) -> None:
        if not ok:
            where = f"{self.stage}.{name}" if self.stage else name
            raise InputError(f"setting {where} = {getattr(self, name)!r}: {what}")

    def _unique(self, *names: str) -> None:
        """Refuse a list setting that holds a value twice (two equal seeds are not two draws)."""
        for n in names:
            v = list(getattr(self, n))
            twice = next((x for i, x in enumerate(v) if x in v[:i]), None)
            self._require(n, twice is None, f"holds {twice!r} twice; give each value once (each counts as an "
                                            "independent point of the design)")

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
        """Build from a dict; unknown keys are refused with the known ones listed, and every value
        must have its field's type exactly (``"false"`` is not a boolean)."""
        if not isinstance(data, dict):
            raise InputError(f"{source}: [{cls.stage}] must be a table of settings, got {type(data).__name__}")
        return cls(**cls._plain_kwargs(data, source))

    @classmethod
    def _plain_kwargs(cls, data: dict[str, Any], source: str, exclude: tuple[str, ...] = (),
                      also_known: tuple[str, ...] = ()) -> dict[str, Any]:
        """The constructor's keyword arguments for the plain (non-section) settings in ``data``:
        unknown keys refused, types checked exactly, lists as tuples, integers as floats where
        the field is a float."""
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in exclude}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            where = f"[{cls.stage}] " if cls.stage else ""
            raise InputError(f"{source}: unknown setting(s) {where}{', '.join(unknown)}; known: "
                             f"{', '.join([*fields, *also_known])}")
        kwargs = {}
        for name, value in data.items():
            check_type(cls, name, value, fields[name].type, source)
            if isinstance(value, list):
                value = tuple(value)
            elif isinstance(fields[name].default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            kwargs[name] = value
        return kwargs


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


def check_type(cls: type, name: str, value: Any, annotation: Any, source: str) -> None:
    """Refuse a setting whose value is not exactly of its field's type (``"false"`` for a
    boolean, ``true`` for an integer, a nested list for a list of names): an :class:`InputError`
    naming the setting and the type it needs. Annotations other than ``bool``, ``int``,
    ``float``, ``str`` (optionally ``| None``) and ``tuple[<one of those>, ...]`` are not checked."""
    ann = str(annotation).replace(" ", "")
    optional = ann.endswith("|None")
    base = ann.removesuffix("|None")
    if value is None and optional:
        return
    stage = getattr(cls, "stage", "")
    where = f"[{stage}] {name}" if stage else name
    if base.startswith("tuple[") and base.endswith(",...]") and base[6:-5] in _TYPE_NAMES:
        elem = base[6:-5]
        if not isinstance(value, (list, tuple)) or not all(_matches(v, elem) for v in value):
            raise InputError(f"{source}: setting {where} = {value!r}: must be a list of "
                             f"{_TYPE_NAMES[elem].split(' (')[0].removeprefix('a ').removeprefix('an ')}s")
        return
    if base in _TYPE_NAMES and not _matches(value, base):
        raise InputError(f"{source}: setting {where} = {value!r}: must be {_TYPE_NAMES[base]}"
                         + (" or left out" if optional else ""))
