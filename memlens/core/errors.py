"""Exceptions raised by memlens.

Every error that reaches a user says what was wrong, where (file and line, paragraph id, hook
name) and what to do about it.
"""

from __future__ import annotations


class MemlensError(Exception):
    """Base class of every error memlens raises on purpose."""


class InputError(MemlensError, ValueError):
    """Input data (paragraphs, files, arguments) that memlens cannot use."""


class ModelLoadError(MemlensError, RuntimeError):
    """A model could not be loaded (unknown name, hub unreachable, unsupported file)."""


class HookError(MemlensError, KeyError):
    """A hook name that the model does not expose."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class CacheError(MemlensError, RuntimeError):
    """A cached artefact is missing, partial or corrupted."""
