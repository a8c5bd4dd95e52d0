"""The Stage table: the one list of what ``memlens run`` does.

A :class:`Stage` row names a stage, its settings class, the function that runs it, its help
text, the files it writes and the function that draws its report section. The pipeline runs the
rows in order, the command line has one subcommand per row, :class:`~memlens.run.config.RunConfig`
has one table of settings per row (recorded in ``run.json``) and the report one section per row.
The built-in rows live in :mod:`memlens.run.stages`, one module per stage; a new analysis is one
analysis module plus one row (:func:`register_stage`; docs/contributing.md).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, TypeVar

from memlens.core.errors import InputError
from memlens.core.results import Result
from memlens.run.config import check_stage_name, register_settings, unregister_settings
from memlens.run.settings import StageConfig
from memlens.run.folder import RunFolder

if TYPE_CHECKING:
    from pathlib import Path

    from memlens.run.context import RunContext
    from memlens.viz.html import ReportBuilder

R = TypeVar("R", bound=Result)

#: draws a stage's section of the report: (builder, the section's HTML parts, folder, stage summary)
ReportSection = Callable[["ReportBuilder", list[str], RunFolder, dict[str, Any]], None]


class StageSkipped(Exception):
    """A stage has nothing to work on (e.g. no memorized paragraphs); the message says why."""


@dataclass(frozen=True)
class Stage:
    """One row of the Stage table.

    Attributes:
        name: the stage's name: its subcommand, its settings section and its summary file.
        run: computes the stage into the run folder and returns its JSON-able summary.
        help: one line for ``memlens --help`` (and the subcommand's description).
        config: the stage's settings class (a table of RunConfig), or None.
        files: the files the stage writes, key -> file name (``{name}`` allowed); the run folder
            knows a file by its key only once a row declares it.
        title: the heading of the stage's report section ("" for none).
        report: draws the stage's report section from its files and summary (None: no section).
        needs: stages that must have run first (run first when missing).
    """

    name: str
    run: Callable[["RunContext"], dict[str, Any]]
    help: str
    config: type[StageConfig] | None = None
    files: Mapping[str, str] = field(default_factory=dict)
    title: str = ""
    report: ReportSection | None = None
    needs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.config is not None:
            check_stage_name(self.name, self.config)
        RunFolder.declare(dict(self.files), check_only=True)


_TABLE: list[Stage] = []


def stages() -> tuple[Stage, ...]:
    """The Stage table, in running order."""
    return tuple(_TABLE)


def stage_names() -> tuple[str, ...]:
    """The stages' names, in running order."""
    return tuple(s.name for s in _TABLE)


def get_stage(name: str) -> Stage:
    """The row of stage ``name``; an :class:`InputError` listing the stages otherwise."""
    for s in _TABLE:
        if s.name == name:
            return s
    raise InputError(f"unknown stage {name!r}; stages are {', '.join(stage_names())}")


def register_stage(stage: Stage, *, before: str | None = None) -> Stage:
    """Add a row to the table (at the end, or before stage ``before``); returns it."""
    if stage.name in stage_names():
        raise InputError(f"a stage {stage.name!r} exists already")
    index = len(_TABLE) if before is None else stage_names().index(get_stage(before).name)
    if stage.config is not None:
        register_settings(stage.name, stage.config)
    RunFolder.declare(dict(stage.files))
    _TABLE.insert(index, stage)
    return stage


def unregister_stage(name: str) -> None:
    """Remove a row (for stages added by a test or a notebook), with its settings and file names."""
    stage = get_stage(name)
    _TABLE.remove(stage)
    if stage.config is not None:
        unregister_settings(name)
    RunFolder.undeclare(dict(stage.files))


def saved(ctx: "RunContext", path: "Path", result_type: type[R], compute: Callable[[], R]) -> R:
    """The result saved at ``path`` by an interrupted earlier attempt of this stage, else
    ``compute()`` saved there (always ``compute()`` when the stage runs ``fresh``: a stage
    command). A saved result that cannot be read (damaged) is computed again, with a warning; one
    computed on another model than the run folder's is refused (:meth:`RunFolder.check_provenance`)."""
    if path.exists() and not ctx.fresh:
        try:
            result = result_type.load(path)
        except InputError as e:
            warnings.warn(f"{e}; computing it again", stacklevel=2)
        else:
            return ctx.folder.check_provenance(result, path, ctx.stage or "run")
    result = compute()
    result.save(path)
    return result
