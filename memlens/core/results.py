"""The result protocol shared by every analysis.

Every analysis returns a frozen, keyword-only dataclass deriving from :class:`Result`: it has
``to_dataframe()``, ``summary()``, ``plot()``, ``save(path)`` / ``load(path)`` and a
:class:`Provenance` (model, package versions, the settings that produced it). Results are never
changed after construction; a variant is a new result (``dataclasses.replace``).

On disk a result is one *envelope*: a safetensors file whose tensors are the result's tensors
and whose header metadata holds, under the key ``memlens``, a JSON document::

    {"format": "memlens.result", "version": 1, "kind": "ScanResult",
     "provenance": {...}, "fields": {...}}

Non-JSON values inside ``fields`` are tagged: ``{"$tensor": name}`` (a tensor of the file),
``{"$paragraphs": {...}}`` (a :class:`~memlens.core.data.ParagraphSet`), ``{"$result": kind,
"fields": {...}}`` (a nested result), ``{"$key": [layer, kind, head]}`` (a component key) and
``{"$tuple": [...]}``. No pickle is involved: loading a file never runs code from it. The file is
written to a temporary name and renamed, so a reader never sees half of it.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import math
import platform
import time
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from torch import Tensor

from memlens.core.errors import InputError
from memlens.core.io import atomic_path

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

ENVELOPE_FORMAT = "memlens.result"
ENVELOPE_VERSION = 1
#: paragraph texts longer than this in total (characters) are saved as a tensor, not in the header
TEXTS_IN_HEADER_MAX = 1_000_000
_METADATA_KEY = "memlens"
_KINDS: dict[str, type["Result"]] = {}

R = TypeVar("R", bound="Result")


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """Versions of Python and of the packages a result depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("memlens", "torch", "transformer-lens", "transformers", "plotly", "circuitsvis"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class Provenance:
    """Where a result came from.

    Attributes:
        model: the model's name (``HookedModel.name``).
        versions: Python and package versions at the time (see :func:`versions`).
        config: the settings of the call that produced the result (JSON-able).
        created: local time of creation, ISO 8601.
        precision: the compute precision of the model when it was computed (``fp32`` or
            ``bf16-mixed``; files written before memlens recorded it were fp32).
    """

    model: str = ""
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    created: str = ""
    precision: str = "fp32"

    @classmethod
    def capture(cls, model: Any = None, *, precision: str | None = None, **config: Any) -> "Provenance":
        """The provenance of a result computed now on ``model`` with the settings ``config``; its
        precision is ``precision`` if given, else the model's (``fp32`` for a model name)."""
        name = model if isinstance(model, str) else getattr(model, "name", "") if model is not None else ""
        if precision is None:
            precision = getattr(model, "precision", "fp32") if model is not None and not isinstance(model, str) else "fp32"
        return cls(model=name, versions=dict(versions()), config=_jsonable(config),
                   created=time.strftime("%Y-%m-%dT%H:%M:%S"), precision=precision)


def check_same_model(a: str, b: str, what: str) -> None:
    """Refuse to combine ``what`` computed on two different models (names from provenance), with a
    word on weight forms when the two differ only in processing (``+processed``). Empty names (a
    result built by hand) pass."""
    if not a or not b or a == b:
        return
    if a.removesuffix("+processed") == b.removesuffix("+processed"):
        raise InputError(f"{what} come from different weight forms of one model ({a!r} vs {b!r}: raw and processed "
                         "weights live in different coordinates); compute both on the same form")
    raise InputError(f"{what} come from different models ({a!r} vs {b!r}); compute both on one model")


class Result:
    """Base of every memlens result (mixed into frozen, keyword-only dataclasses).

    Subclasses implement :meth:`to_dataframe` and :meth:`plot`, and usually :meth:`summary`;
    :meth:`save`, :meth:`load` and ``_repr_html_`` come from here.
    """

    provenance: Provenance
    #: the envelope's ``kind``; defaults to the class name
    kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.kind = cls.__name__
        _KINDS[cls.__name__] = cls

    def to_dataframe(self) -> "pd.DataFrame":
        """The result as a table (one row per paragraph, component, head, ... as documented)."""
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        """The result's headline numbers as a JSON-able dict."""
        return {}

    def plot(self) -> "go.Figure":
        """The result's main figure (plotly)."""
        raise NotImplementedError

    def _repr_html_(self) -> str:
        return self.to_dataframe().head(20).to_html(index=False, float_format=lambda x: f"{x:.4g}")

    def save(self, path: str | Path) -> Path:
        """Write the result as one envelope file (safetensors + JSON header); returns its path.

        Args:
            path: the file to write (by convention ``*.safetensors``); its folder is created.

        Returns:
            The path written.
        """
        from safetensors import SafetensorError
        from safetensors.torch import save_file

        tensors: dict[str, Tensor] = {}
        fields = _encode_fields(self, tensors, "")
        doc = {"format": ENVELOPE_FORMAT, "version": ENVELOPE_VERSION, "kind": self.kind,
               "provenance": dataclasses.asdict(self.provenance), "fields": fields}
        path = Path(path)
        try:
            with atomic_path(path) as tmp:
                save_file(tensors, str(tmp), metadata={_METADATA_KEY: json.dumps(doc)})
        except SafetensorError as e:  # safetensors' own error for a failed write (disk full, ...)
            raise OSError(errno.EIO, f"could not write the result ({e})", str(path)) from None
        return path

    @classmethod
    def load(cls: type[R], path: str | Path) -> R:
        """Read a result written by :meth:`save`.

        Args:
            path: an envelope file.

        Returns:
            The result, of this class (``Result.load`` accepts any kind).

        Raises:
            InputError: the file is missing, is not a memlens result, is of a newer envelope
                version, or holds another kind of result.
        """
        doc, tensors = _read(Path(path))
        kind = doc.get("kind")
        if cls is not Result and kind != cls.kind:
            raise InputError(f"{path}: holds a {kind}, not a {cls.kind}; load it with memlens.load_result")
        return _decode(doc["fields"] | {"provenance": doc["provenance"]}, tensors, kind, path)  # type: ignore[return-value]


def load_result(path: str | Path) -> Result:
    """Read any memlens result file, whatever its kind."""
    return Result.load(path)


def read_envelope(path: str | Path) -> dict[str, Any]:
    """The JSON header of a result file (format, version, kind, provenance, fields), without
    loading its tensors."""
    return _read(Path(path), with_tensors=False)[0]


# --- encoding ------------------------------------------------------------------------------

def _encode_fields(obj: Any, tensors: dict[str, Tensor], prefix: str) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(obj):
        if f.name == "provenance":
            continue
        out[f.name] = _encode(getattr(obj, f.name), tensors, f"{prefix}{f.name}")
    return out


def _encode(value: Any, tensors: dict[str, Tensor], name: str) -> Any:
    from memlens.core.components import ComponentKey
    from memlens.core.data import ParagraphSet

    if isinstance(value, Tensor):
        key = name if name not in tensors else f"{name}#{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {"$tensor": key}
    if isinstance(value, ParagraphSet):
        return {"$paragraphs": {
            "tokens": _encode(value.tokens, tensors, f"{name}.tokens"), "prefix_len": value.prefix_len,
            "continuation_len": value.continuation_len, "ids": list(value.ids),
            "texts": _encode_texts(list(value.texts), tensors, f"{name}.texts"),
            "metadata": _encode(value.metadata, tensors, f"{name}.metadata")}}
    if isinstance(value, Result):
        return {"$result": value.kind, "fields": _encode_fields(value, tensors, f"{name}."),
                "provenance": dataclasses.asdict(value.provenance)}
    if isinstance(value, ComponentKey):
        return {"$key": list(value)}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise InputError(f"cannot save {name}: dictionary keys must be strings")
        return {k: _encode(v, tensors, f"{name}.{k}") for k, v in value.items()}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, tensors, f"{name}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, tensors, f"{name}.{i}") for i, v in enumerate(value)]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise InputError(f"cannot save {name}: values of type {type(value).__name__} are not supported")


def _encode_texts(texts: list[str | None], tensors: dict[str, Tensor], name: str) -> Any:
    """Paragraph texts as they are saved: in the JSON header while they are small, else (over
    :data:`TEXTS_IN_HEADER_MAX` characters) as a uint8 tensor of their UTF-8 JSON, since the
    safetensors header is limited to 100 MB."""
    if sum(len(t) for t in texts if t) <= TEXTS_IN_HEADER_MAX:
        return texts
    import torch

    data = json.dumps(texts).encode("utf-8")
    tensors[name] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return {"$json": name}


def _decode_texts(value: Any, tensors: dict[str, Tensor], path: Any) -> list[str | None]:
    if isinstance(value, dict) and "$json" in value:
        key = value["$json"]
        if key not in tensors:
            raise InputError(f"{path}: tensor {key!r} is missing from the file")
        return json.loads(bytes(tensors[key].numpy()).decode("utf-8"))
    return value


def _decode(fields: dict[str, Any], tensors: dict[str, Tensor], kind: str | None, path: Any) -> Result:
    cls = _KINDS.get(str(kind))
    if cls is None:
        raise InputError(f"{path}: unknown result kind {kind!r} (known: {', '.join(sorted(_KINDS))}); a result "
                         "defined outside memlens loads once the module that defines it is imported")
    try:
        values = {k: _decode_value(v, tensors, path) for k, v in fields.items() if k != "provenance"}
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise InputError(f"{path}: a damaged {kind} (a field could not be read: {type(e).__name__} {e}); "
                         "compute it again") from None
    values["provenance"] = _provenance(fields.get("provenance", {}), path)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(values) - names
    if unknown:
        raise InputError(f"{path}: a {kind} has no field(s) {sorted(unknown)}; was it written by a newer memlens?")
    required = {f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = sorted(required - set(values))
    if missing:
        raise InputError(f"{path}: a damaged {kind}: field(s) {missing} are missing; compute it again")
    for name, expected in _field_types(cls).items():
        if name in values and not _is_instance(values[name], expected):
            raise InputError(f"{path}: a damaged {kind}: field {name!r} is {_describe(values[name])}, expected "
                             f"{getattr(expected, '__name__', expected)}; compute it again")
    try:
        return cls(**values)
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as e:
        raise InputError(f"{path}: a damaged {kind} ({type(e).__name__}: {e}); compute it again") from None


def _provenance(data: Any, path: Any) -> Provenance:
    """A :class:`Provenance` from its saved dict, checked: a dict of the known keys."""
    known = {f.name for f in dataclasses.fields(Provenance)}
    if not isinstance(data, dict) or not set(data) <= known:
        raise InputError(f"{path}: a damaged provenance (expected an object with keys {sorted(known)}); compute it "
                         "again")
    if not isinstance(data.get("model", ""), str) or not isinstance(data.get("precision", "fp32"), str) \
            or not all(isinstance(data.get(k, {}), dict) for k in ("versions", "config")):
        raise InputError(f"{path}: a damaged provenance (model and precision must be strings, versions and config "
                         "objects); "
                         "compute it again")
    return Provenance(**data)


@functools.lru_cache(maxsize=None)
def _field_types(cls: type) -> dict[str, Any]:
    """The fields of a result class whose annotation can be checked on load: tensors with a
    jaxtyping shape (dtype and rank), and plain ``int`` / ``float`` / ``str`` / ``bool`` (each
    possibly ``| None``). Annotations that cannot be evaluated are left out."""
    import sys
    import typing

    scope = vars(sys.modules[cls.__module__])
    out = {}
    for f in dataclasses.fields(cls):
        try:
            hint = eval(f.type, scope) if isinstance(f.type, str) else f.type  # noqa: S307 (our own annotations)
        except Exception:
            continue
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        args = [a for a in typing.get_args(hint) if a is not type(None)] if union else [hint]
        if len(args) == 1 and (hasattr(args[0], "dims") or args[0] in (int, float, str, bool)):
            out[f.name] = hint
    return out


def _is_instance(value: Any, expected: Any) -> bool:
    import typing

    options = typing.get_args(expected) or (expected,)
    for t in options:
        if value is None and t is type(None):
            return True
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if t is int and isinstance(value, bool):
            continue
        if t is not type(None) and isinstance(value, t):
            return True
    return False


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dim()}-D {str(value.dtype).replace('torch.', '')} tensor {tuple(value.shape)}"
    return f"a {type(value).__name__} ({value!r:.40})"


def _decode_value(value: Any, tensors: dict[str, Tensor], path: Any) -> Any:
    from memlens.core.components import ComponentKey
    from memlens.core.data import ParagraphSet

    if isinstance(value, list):
        return [_decode_value(v, tensors, path) for v in value]
    if not isinstance(value, dict):
        return value
    if "$tensor" in value:
        key = value["$tensor"]
        if key not in tensors:
            raise InputError(f"{path}: tensor {key!r} is missing from the file")
        return tensors[key]
    if "$paragraphs" in value:
        p = value["$paragraphs"]
        return ParagraphSet(_decode_value(p["tokens"], tensors, path), p["prefix_len"], p["continuation_len"],
                            p["ids"], _decode_texts(p["texts"], tensors, path), _decode_value(p["metadata"], tensors, path))
    if "$result" in value:
        return _decode(value["fields"] | {"provenance": value.get("provenance", {})}, tensors, value["$result"], path)
    if "$key" in value:
        return ComponentKey(*value["$key"])
    if "$tuple" in value:
        return tuple(_decode_value(v, tensors, path) for v in value["$tuple"])
    return {k: _decode_value(v, tensors, path) for k, v in value.items()}


def _read(path: Path, with_tensors: bool = True) -> tuple[dict[str, Any], dict[str, Tensor]]:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise InputError(f"{path}: no such result file")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()} if with_tensors else {}
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"{path}: not a memlens result file ({e}); results are written by Result.save") from None
    try:
        doc = json.loads(meta[_METADATA_KEY])
    except (KeyError, ValueError, RecursionError):
        raise InputError(f"{path}: a safetensors file without a memlens header; not a memlens result") from None
    if not isinstance(doc, dict) or doc.get("format") != ENVELOPE_FORMAT:
        raise InputError(f"{path}: not a memlens result envelope (format "
                         f"{doc.get('format') if isinstance(doc, dict) else type(doc).__name__!r})")
    check_envelope(doc, path)
    return doc, tensors


def check_envelope(doc: dict[str, Any], path: Any) -> None:
    """Check an envelope's schema once, on every load: ``version`` an integer this memlens reads,
    ``kind`` a string, ``provenance`` and ``fields`` objects. An :class:`InputError` says which
    key is wrong."""
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise InputError(f"{path}: a damaged result envelope: version is {version!r}, not an integer; compute it again")
    if version > ENVELOPE_VERSION:
        raise InputError(f"{path}: envelope version {version} is newer than this memlens reads "
                         f"({ENVELOPE_VERSION}); upgrade memlens")
    for key, kind in (("kind", str), ("provenance", dict), ("fields", dict)):
        if not isinstance(doc.get(key), kind):
            what = "missing" if key not in doc else f"a {type(doc[key]).__name__}"
            raise InputError(f"{path}: a damaged result envelope: {key!r} is {what}, expected "
                             f"{'a string' if kind is str else 'an object'}; compute it again")


def _jsonable(value: Any) -> Any:
    """``value`` with tuples as lists, paths as strings and non-finite floats kept (JSON NaN)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return value
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "item"):
        return value.item()
    return repr(value)
