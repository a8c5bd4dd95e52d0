"""The names ``load_model`` knows (``organism``, ``organism-tiny``, ...) and the check of a
``--model`` value before anything loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from memlens.core.errors import ModelLoadError
from memlens.core.model import HookedModel

ModelSource = Callable[..., HookedModel]
_SOURCES: dict[str, tuple[ModelSource, str, dict[str, Any]]] = {}


def register_model_source(name: str, factory: ModelSource, description: str = "",
                          settings: dict[str, Any] | None = None) -> None:
    """Make ``load_model(name)`` (and ``--model name``) call ``factory(seed=..., cache_dir=...,
    progress=...)``. Embedded models register themselves this way. ``settings``: dotted
    :class:`~memlens.RunConfig` settings recommended for this model (``{"heads.exact_top": 12}``),
    applied by :meth:`RunConfig.recommended` before a user's own."""
    _SOURCES[name] = (factory, description, dict(settings or {}))


def model_sources() -> dict[str, str]:
    """The registered model names and what each is."""
    return {name: desc for name, (_, desc, _) in _SOURCES.items()}


def registered_source(name: str) -> ModelSource:
    """The factory registered under ``name``."""
    return _SOURCES[name][0]


def recommended_settings(name: str) -> dict[str, Any]:
    """The settings a registered model recommends (empty for other models)."""
    return dict(_SOURCES[name][2]) if name in _SOURCES else {}


def _looks_like_path(spec: str) -> bool:
    """Whether a ``--model`` value can only be meant as a local path: it starts like one
    (``/``, ``./``, ``../``, ``~``), has a backslash or more than one ``/`` (a hub id is
    ``name`` or ``org/name``), or ends in a file suffix."""
    return (spec.startswith(("/", "./", "../", "~", ".\\")) or "\\" in spec or spec.count("/") > 1
            or spec in (".", "..") or Path(spec).suffix in (".safetensors", ".bin", ".pt", ".json"))


def check_spec(spec: str) -> None:
    """Refuse, before any loading, a ``--model`` value that names nothing: an unregistered
    embedded name (``organism-small``) or a local path that does not exist."""
    import difflib

    if not spec.strip():
        raise ModelLoadError("empty model name; give a registered name (organism, organism-tiny, ...), a folder, "
                             "a .gguf file or a hub id")
    close = difflib.get_close_matches(spec, list(_SOURCES), n=1, cutoff=0.6)
    if spec.startswith("organism") or (close and "/" not in spec and not Path(spec).exists()):
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ModelLoadError(f"unknown model {spec!r}: {hint}the embedded models are {', '.join(_SOURCES)}")
    path = Path(spec).expanduser()
    if _looks_like_path(spec) and not path.exists():
        raise ModelLoadError(f"{spec}: no such model folder or file (looked for {path.resolve()}); give an existing "
                             "folder written by save_pretrained, a .gguf file, or a hub id like org/name")
    if path.exists() and not path.is_dir():
        raise ModelLoadError(f"{spec}: a file, not a model folder; give the folder that holds config.json "
                             "(or a .gguf file)")
