"""The base of every analysis class: one constructor, one verb.

Every analysis takes ``(model, *, batch_size=None, progress=True, precision=None)`` and answers one call,
:meth:`Analysis.run`, with a :class:`~memlens.core.results.Result` (captum's shape: the class is the
method, the constructor takes the model). Its default batch size is the class attribute
:attr:`Analysis.DEFAULT_BATCH_SIZE`, which the settings of ``memlens run`` read too, so each
default is written once. A call's own ``batch_size`` / ``progress`` win over the constructor's.
A ``precision`` (``fp32`` or ``bf16-mixed``, docs/precision.md) applies to every public method of the
analysis: the model computes at it for the call and is put back after it.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from memlens.core.errors import InputError
from memlens.core.precision import check_precision

if TYPE_CHECKING:
    from memlens.core.model import HookedModel
    from memlens.core.results import Result


class Analysis:
    """One analysis of a :class:`~memlens.HookedModel`: construct it with the model, call :meth:`run`.

    Attributes:
        model: the model analysed.
        batch_size: paragraphs per forward (or backward) pass; :attr:`DEFAULT_BATCH_SIZE` unless given.
        progress: show progress bars.
        precision: the compute precision of every call (``fp32`` or ``bf16-mixed``), or None for
            the model's own (``model.precision``).
    """

    #: paragraphs per pass when the caller gives none (memory-bound; not a result-affecting setting)
    DEFAULT_BATCH_SIZE: ClassVar[int] = 16

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        wrapped: dict[int, Callable[..., Any]] = {}  # an alias (``compute = run``) stays the same function
        for name, value in list(vars(cls).items()):
            if not name.startswith("_") and inspect_plain_function(value):
                setattr(cls, name, wrapped.setdefault(id(value), _at_precision(value)))

    def __init__(self, model: "HookedModel", *, batch_size: int | None = None, progress: bool = True,
                 precision: str | None = None) -> None:
        """
        Args:
            model: the model.
            batch_size: paragraphs per pass (default :attr:`DEFAULT_BATCH_SIZE`; a call's own wins).
            progress: show progress bars (a call's own ``progress`` wins).
            precision: ``fp32`` or ``bf16-mixed`` for every call of this analysis; None: the model's.
        """
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.model = model
        self.batch_size = batch_size or self.DEFAULT_BATCH_SIZE
        self.progress = progress
        self.precision = None if precision is None else check_precision(precision)

    def run(self, *args: Any, **kwargs: Any) -> "Result":
        """Compute the analysis; every subclass implements it and returns a Result."""
        raise NotImplementedError(f"{type(self).__name__}.run")

    def _progress(self, progress: bool | None) -> bool:
        """A call's ``progress`` if given, else the constructor's."""
        return self.progress if progress is None else progress

    def _batch_size(self, batch_size: int | None) -> int:
        """A call's ``batch_size`` if given, else the constructor's."""
        return batch_size or self.batch_size

    def __repr__(self) -> str:
        return f"{type(self).__name__}({getattr(self.model, 'name', self.model)!r}, batch_size={self.batch_size})"


def inspect_plain_function(value: Any) -> bool:
    """Whether a class attribute is a plain method (not a property, class- or static method)."""
    import inspect

    return inspect.isfunction(value) and not getattr(value, "_at_precision", False)


def _at_precision(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` run with the analysis's model at the analysis's precision (if it has one)."""

    @functools.wraps(method)
    def wrapped(self: Analysis, *args: Any, **kwargs: Any) -> Any:
        model = getattr(self, "model", None)
        if model is None or not hasattr(model, "using_precision"):
            return method(self, *args, **kwargs)
        with model.using_precision(getattr(self, "precision", None)):
            return method(self, *args, **kwargs)

    wrapped._at_precision = True  # type: ignore[attr-defined]
    return wrapped
