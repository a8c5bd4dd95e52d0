"""The run folder: every path and file name of a ``memlens run`` lives here.

A run folder holds ``run.json`` (what the run is: model, paragraphs, seed, settings), one
``<stage>.summary.json`` per finished stage, the stages' result files, ``summary.json`` and
``report.html``. Stages name their files by key (``folder.file("heads")``); each row of the Stage
table declares its own keys (:attr:`memlens.run.stage.Stage.files`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from memlens.core.errors import InputError
from memlens.core.io import read_json, write_json_atomic


class ForeignResultError(InputError):
    """A result file in a run folder computed on another model than the folder's: not damage that
    one report section can show, but a mix of two runs; the whole command refuses it."""

#: every file a stage of the Stage table writes: key -> file name ({name}: a set such as
#: ``memorized``); each row declares its own (:attr:`memlens.run.stage.Stage.files`)
FILES: dict[str, str] = {}


@dataclass(frozen=True)
class RunFolder:
    """A run folder's paths and its small JSON files (manifest, stage summaries).

    Attributes:
        path: the folder.
    """

    path: Path
    MANIFEST: ClassVar[str] = "run.json"
    SUMMARY: ClassVar[str] = "summary.json"
    REPORT: ClassVar[str] = "report.html"

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def manifest(self) -> Path:
        """``run.json``: model, paragraphs, seed, settings, versions."""
        return self.path / self.MANIFEST

    @property
    def summary(self) -> Path:
        """``summary.json``: the manifest and every stage summary together."""
        return self.path / self.SUMMARY

    @property
    def report(self) -> Path:
        """``report.html``."""
        return self.path / self.REPORT

    def file(self, key: str, name: str = "") -> Path:
        """The path of a stage's file by the key its Stage row declared (:data:`FILES`);
        ``name`` fills ``{name}`` (``file("gradient_map", "memorized")``)."""
        if key not in FILES:
            raise InputError(f"no run-folder file {key!r}; known: {', '.join(FILES)}")
        return self.path / FILES[key].format(name=name)

    @staticmethod
    def declare(files: dict[str, str], *, check_only: bool = False) -> None:
        """Add a stage's file keys (refused if a key already names another file); with
        ``check_only`` only the refusal."""
        for key, pattern in files.items():
            if FILES.get(key, pattern) != pattern:
                raise InputError(f"run-folder file key {key!r} already names {FILES[key]!r}")
        if not check_only:
            FILES.update(files)

    @staticmethod
    def undeclare(files: dict[str, str]) -> None:
        """Remove a removed stage's file keys."""
        for key, pattern in files.items():
            if FILES.get(key) == pattern:
                del FILES[key]

    def stage_summary_path(self, stage: str) -> Path:
        """``<stage>.summary.json``: written when the stage finishes; its presence means done."""
        return self.path / f"{stage}.summary.json"

    def is_done(self, stage: str) -> bool:
        """Whether ``stage`` has finished in this folder."""
        return self.stage_summary_path(stage).exists()

    def redo_hint(self, stage: str) -> str:
        """The command that recomputes a stage's files."""
        return f"delete it and run `memlens {stage} --out {self.path}` again"

    def read_stage_summary(self, stage: str) -> dict[str, Any] | None:
        """``<stage>.summary.json`` (None if the stage has not run); a damaged one is an
        :class:`InputError` that says how to redo the stage."""
        path = self.stage_summary_path(stage)
        if not path.exists():
            return None
        data = read_json(path, self.redo_hint(stage))
        if not isinstance(data, dict):
            raise InputError(f"{path} is not a stage summary (a JSON object); {self.redo_hint(stage)}")
        return data

    def write_stage_summary(self, stage: str, summary: dict[str, Any]) -> None:
        """Write ``<stage>.summary.json`` atomically (marks the stage done)."""
        write_json_atomic(self.stage_summary_path(stage), summary)

    def read_manifest(self) -> dict[str, Any] | None:
        """``run.json`` as a dict (None if the folder holds no run); a damaged one is an
        :class:`InputError`."""
        if not self.manifest.exists():
            return None
        data = read_json(self.manifest, "delete the folder or choose another --out")
        if not isinstance(data, dict):
            raise InputError(f"{self.manifest} is not a run manifest (a JSON object); delete the folder or choose "
                             "another --out")
        problem = _manifest_problem(data)
        if problem:
            raise InputError(f"{self.manifest} is damaged ({problem}); restore it, or delete the folder (or choose "
                             "another --out) and run again")
        return data

    def model_name(self) -> str | None:
        """The name of the model this folder's results were computed on (``run.json``'s
        ``model_name``, recorded when the model first loads), or None before that."""
        have = self.read_manifest()
        return None if have is None else have.get("model_name")

    def record_model_name(self, name: str) -> None:
        """Record the loaded model's name in ``run.json`` on first load; refuse a model whose name
        differs from the one recorded (the folder's results were computed on that one)."""
        have = self.read_manifest()
        if have is None:
            return
        recorded = have.get("model_name")
        if recorded is None:
            write_json_atomic(self.manifest, have | {"model_name": name})
        elif recorded != name:
            raise InputError(f"{self.path} holds results of the model {recorded!r}; the model loaded now is {name!r}; "
                             "choose another --out for this model")

    def check_provenance(self, result: Any, path: Path, stage: str) -> Any:
        """``result`` if it was computed on this folder's model (its provenance against
        ``run.json``); a :class:`ForeignResultError` naming both models and the command that redoes
        the stage otherwise."""
        expected = self.model_name()
        got = getattr(getattr(result, "provenance", None), "model", "")
        if expected is not None and got and got != expected:
            raise ForeignResultError(f"{path} was computed on the model {got!r}, but this run folder's model is {expected!r} "
                             f"(run.json); it comes from another run: {self.redo_hint(stage)}")
        return result

    def load(self, key: str, result_type: type, stage: str, name: str = "") -> Any:
        """The result file of a stage by key, loaded and checked against this folder's model
        (:meth:`check_provenance`)."""
        path = self.file(key, name)
        return self.check_provenance(result_type.load(path), path, stage)

    def read_json_file(self, key: str, stage: str) -> Any:
        """A JSON file of a stage by key (None if absent); a damaged one says which stage to redo."""
        path = self.file(key)
        return read_json(path, self.redo_hint(stage)) if path.exists() else None


def _manifest_problem(data: dict[str, Any]) -> str:
    """What is wrong with a parsed ``run.json`` (empty if nothing): the keys a reader uses must
    have their types (model a string, paragraphs null or an object with a path, seed an integer,
    config an object)."""
    if "model" in data and not isinstance(data["model"], str):
        return f"model is {data['model']!r}, not a string"
    para = data.get("paragraphs")
    if para is not None and not (isinstance(para, dict) and isinstance(para.get("path"), str)):
        return f"paragraphs is {para!r:.60}, not null or an object with a path"
    if "seed" in data and (not isinstance(data["seed"], int) or isinstance(data["seed"], bool)):
        return f"seed is {data['seed']!r}, not an integer"
    if "config" in data and not isinstance(data["config"], dict):
        return f"config is a {type(data['config']).__name__}, not an object"
    if "model_name" in data and not isinstance(data["model_name"], str):
        return f"model_name is {data['model_name']!r}, not a string"
    return ""
